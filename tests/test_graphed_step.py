"""The graphed training step (``train.cuda_graphs``) and ``train.compile``, checked on a CPU.

A CUDA graph replays the kernels of its capture: Python values read during the capture are frozen, tensors are
read again at every replay. :class:`RecordingGraphs` has that contract without a GPU (a capture records the
step without running it; a replay runs the recording, whose Python values are those of the capture), so these
tests run the real graphed path of the trainer (static buffers, warm-up steps, one graph per warm-start phase,
the learning rate as a tensor, the run's progress as a tensor) and compare it with eager training.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_runs import RecordingGraphs, assert_close_weights, tiny, train_eagerly_with_a_tensor_learning_rate

from mimmo.methods.base import Progress
from mimmo.methods.registry import METHODS, build_method
from mimmo.models.resnet import ResNetConfig, ResNetFactory
from mimmo.training import MethodModule, train
from mimmo.training.step import TrainingStep

METHOD_OVERRIDES = {
    "base": [], "ensemble": ["method.num_members=2"], "mc_dropout": ["method.num_samples=2"], "dun": [],
    "early_exit": [], "mimo": [], "datamux": [], "mixmo": [], "mimmo_gamma": [], "mimmo": []}


@pytest.mark.parametrize("method", ["mimmo", "mixmo", "mc_dropout"])
def test_the_graphed_path_trains_as_the_eager_one(tmp_path, recording, method):
    """MIMMO: a graph per warm-start phase; MixMo: CutMix's probability decays with the run's progress (read as a
    tensor); MC Dropout: random masks inside the network. Three epochs of 8 steps, 3 eager steps per phase: the
    same weights and metrics to the bit as eager steps."""
    overrides = [f"method={method}", "train.epochs=3", *METHOD_OVERRIDES[method]]
    graphed = train(tiny(*overrides, "train.cuda_graphs=true"), tmp_path / "graphed")
    (backend,) = recording
    phases = 2 if method == "mimmo" else 1
    assert backend.captures == phases and backend.warmups == 3 * phases
    assert backend.replays == 3 * 8 - 3 * phases  # every other step was a replay of a recording
    eager = train_eagerly_with_a_tensor_learning_rate(tiny(*overrides), tmp_path / "eager")
    assert_close_weights(tmp_path / "graphed", tmp_path / "eager")
    assert graphed["test"] == eager["test"]
    assert graphed["exit_weights_history"] == eager["exit_weights_history"]


def test_the_learning_rate_tensor_follows_the_cosine_schedule(tmp_path, recording, monkeypatch):
    """The schedule overwrites the graph's learning-rate tensor in place, epoch by epoch."""
    seen = []
    original = MethodModule.on_train_epoch_end

    def record(self):
        group = self.optimizers().optimizer.param_groups[0]
        seen.append((group["lr"], float(group["lr"])))
        original(self)

    monkeypatch.setattr(MethodModule, "on_train_epoch_end", record)
    train(tiny("method=mimo", "train.epochs=4", "train.cuda_graphs=true"), tmp_path)
    tensors, values = zip(*seen, strict=True)
    assert all(tensor is tensors[0] for tensor in tensors)  # one tensor, written in place
    expected = [0.005 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert values == pytest.approx(expected, rel=1e-6)


def test_a_step_that_reads_its_batch_outside_the_static_buffers_would_be_caught(tmp_path, recording, monkeypatch):
    """The stand-in has teeth: a step that trained on the batch of its capture at every replay diverges."""
    original = TrainingStep.load

    def load_only_the_first_batch(self, images, labels, progress):
        if self.images is None:
            original(self, images, labels, progress)
        else:
            self.fraction.fill_(float(progress.fraction))

    monkeypatch.setattr(TrainingStep, "load", load_only_the_first_batch)
    train(tiny("method=mimo", "train.cuda_graphs=true"), tmp_path / "broken")
    train_eagerly_with_a_tensor_learning_rate(tiny("method=mimo"), tmp_path / "eager")
    with pytest.raises(AssertionError):
        assert_close_weights(tmp_path / "broken", tmp_path / "eager")


def test_a_graphed_run_resumes_exactly(tmp_path, recording):
    """Cut off in its second epoch and started again: the graphs are captured again after the checkpoint is
    loaded (new optimiser state, learning-rate tensor), and the run ends as an uninterrupted graphed one."""
    config = ["method=mimmo", "train.epochs=3", "train.cuda_graphs=true"]
    reference = train(tiny(*config), tmp_path / "reference")
    original = MethodModule.training_step

    class CutOff(Exception):
        pass

    def cut(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 5:
            raise CutOff
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodModule, "training_step", cut)
        with pytest.raises(CutOff):
            train(tiny(*config), tmp_path / "resumed")
    resumed = train(tiny(*config), tmp_path / "resumed")
    assert_close_weights(tmp_path / "reference", tmp_path / "resumed")
    assert resumed["test"] == reference["test"]


def test_a_run_cut_off_eagerly_resumes_graphed_and_back(tmp_path, recording, monkeypatch):
    """The optimiser's form (learning rate as float or tensor) follows the resuming run's path, and the schedule
    goes on where it stopped."""
    original_step, original_end = MethodModule.training_step, MethodModule.on_train_epoch_end
    seen: list[tuple[int, bool, float]] = []

    class CutOff(Exception):
        pass

    def cut(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 2:
            raise CutOff
        return original_step(self, batch, batch_idx)

    def record(self):
        lr = self.optimizers().optimizer.param_groups[0]["lr"]
        seen.append((self.current_epoch, isinstance(lr, torch.Tensor), float(lr)))
        original_end(self)

    monkeypatch.setattr(MethodModule, "on_train_epoch_end", record)
    expected = [0.005 * (1 + math.cos(math.pi * epoch / 3)) / 2 for epoch in range(3)]
    for first, second in (("false", "true"), ("true", "false")):
        seen.clear()
        run_dir = tmp_path / f"{first}-{second}"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MethodModule, "training_step", cut)
            with pytest.raises(CutOff):
                train(tiny("method=mimo", "train.epochs=3", f"train.cuda_graphs={first}"), run_dir)
        metrics = train(tiny("method=mimo", "train.epochs=3", f"train.cuda_graphs={second}"), run_dir)
        assert [epoch for epoch, _, _ in seen] == [0, 1, 2]
        assert [lr for _, _, lr in seen] == pytest.approx(expected, rel=1e-6)
        assert [is_tensor for _, is_tensor, _ in seen] == [first == "true"] + [second == "true"] * 2
        assert math.isfinite(metrics["test"]["nll"])


def test_cuda_graphs_true_is_refused_without_a_gpu(tmp_path):
    with pytest.raises(ValueError, match=r"train\.cuda_graphs=true needs one CUDA device"):
        train(tiny("train.cuda_graphs=true", "train.accelerator=auto"), tmp_path)


def test_a_graphed_step_refuses_a_batch_of_another_shape():
    method = build_method("base", ResNetFactory(ResNetConfig(planes=(4, 4, 4, 4), layers=(1, 1, 1, 1),
                                                             stem_channels=4)), 3, 10)
    optimizer = torch.optim.Adam(method.parameters(), lr=torch.tensor(0.01))
    step = TrainingStep(method.training_loss, method.graph_key, lambda x: x.float(), optimizer,
                        graphs=RecordingGraphs())
    progress = Progress(0, 1, 0.0, 8)
    step(torch.zeros(8, 3, 8, 8, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), progress)
    with pytest.raises(ValueError, match=r"batches of one shape.*\(4, 3, 8, 8\)"):
        step(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), progress)


# ------------------------------------------------------------------------------------------- torch.compile


def method_batch(method, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 16, 16, generator=generator)
    y = torch.randint(0, 5, (6,), generator=generator)
    if method.data_streams > 1:
        x = torch.stack([x, x.flip(0)], 1)
        y = torch.stack([y, y.flip(0)], 1)
    return x, y


@pytest.mark.parametrize("name", list(METHODS))
def test_every_training_loss_compiles_to_one_graph_with_the_eager_loss_and_gradients(name, monkeypatch):
    """``train.compile`` for every method: TorchDynamo captures the whole loss as ONE graph (fullgraph: no host
    sync and no Python branch on a tensor, as a CUDA graph also needs) and AOTAutograd's forward and backward give
    the eager loss and gradients. On the GPU's training path the exits run their reference modules (the fused CPU
    exit is an eager island under torch.compile by design), so that path is the one compiled here."""
    monkeypatch.setattr("mimmo.models.backbone._exit_path", "reference")
    options = {"ensemble": {"num_members": 2}, "mc_dropout": {"num_samples": 2}}.get(name, {})
    if name in ("dun", "mimmo"):
        options = {"warm_start_epochs": 1}
    torch.manual_seed(0)
    method = build_method(name, ResNetFactory(ResNetConfig(planes=(4, 4, 4, 4), layers=(1, 1, 1, 1),
                                                           stem_channels=4)), 3, 5, options).train()
    x, y = method_batch(method)
    compiled = torch.compile(method.training_loss, backend="aot_eager", fullgraph=True)
    for epoch in (0, 2) if name in ("dun", "mimmo") else (0,):  # MIMMO/DUN: the warm start and after it
        progress = Progress(epoch, 3, torch.tensor(epoch / 3 + 0.3), 100)
        results = []
        for loss_fn in (method.training_loss, compiled):
            torch.manual_seed(1)
            method.zero_grad(set_to_none=True)
            loss = loss_fn(x, y, progress).loss
            loss.backward()
            results.append((loss.detach(), {k: p.grad.clone() for k, p in method.named_parameters()
                                            if p.grad is not None}))
        (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
        assert compiled_grads.keys() == eager_grads.keys()
        for key, grad in eager_grads.items():
            torch.testing.assert_close(compiled_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)
