"""The fast exit adapter computes the same function as conv1x1 -> BN -> ReLU -> pool, step by step.

The fused path (mimmo.models.backbone, ``set_exit_path("fused")``) never materialises the wide map; these
tests hold it to the straightforward computation: outputs in training and eval mode, gradients of the input
and of every parameter, BN running statistics, and the paper's FLOPs and parameter counts.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mimmo.evaluation.cost import count_cost
from mimmo.methods import DUN, MIMMO, Progress
from mimmo.models import ConvExitAdapter, ResNetConfig, ResNetFactory
from mimmo.models import backbone as backbone_module
from mimmo.models.backbone import get_exit_path, set_exit_path

TINY = ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 8, 8), stem_channels=4))


@pytest.fixture(autouse=True)
def restore_exit_path():
    previous = get_exit_path()
    yield
    set_exit_path(previous)


def random_adapter(in_channels: int, out_features: int, dtype: torch.dtype) -> ConvExitAdapter:
    """An adapter with non-trivial BN parameters and running statistics."""
    adapter = ConvExitAdapter(in_channels, out_features).to(dtype)
    with torch.no_grad():
        adapter[0].bias.normal_()
        adapter[1].weight.uniform_(0.5, 1.5)
        adapter[1].bias.normal_()
        adapter[1].running_mean.normal_()
        adapter[1].running_var.uniform_(0.5, 2.0)
    return adapter


def stage_output(batch: int, channels: int, size: int, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, channels, size, size, dtype=dtype).relu() + 0.1  # like a post-ReLU stage output
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def run(adapter: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, path: str) -> dict[str, torch.Tensor]:
    """Forward and backward in ``adapter``'s mode; returns the output, the gradients and the BN buffers."""
    set_exit_path(path)
    x = x.detach().clone().requires_grad_()
    out = adapter(x)
    (out * grad_out).sum().backward()
    result = {"out": out.detach(), "grad_x": x.grad}
    result |= {f"grad_{name}": p.grad for name, p in adapter.named_parameters()}
    result |= {name: b.clone() for name, b in adapter.named_buffers()}
    return result


def assert_close(fast: dict, reference: dict, rtol: float, atol_scale: float, skip: tuple[str, ...] = ()) -> None:
    for key, expected in reference.items():
        if key in skip:
            continue
        actual = fast[key]
        assert actual.shape == expected.shape, key
        scale = expected.abs().max().item() if expected.is_floating_point() else 0
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol_scale * max(scale, 1e-12), msg=key)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 48, 100_000])  # one image a chunk, uneven chunks, one chunk
def test_fused_training_mode_matches_reference_float64(channels_last, chunk_rows, monkeypatch):
    monkeypatch.setattr(backbone_module, "FUSED_CHUNK_ROWS", chunk_rows)
    torch.manual_seed(0)
    adapter = random_adapter(6, 10, torch.float64)
    x = stage_output(5, 6, 4, torch.float64, channels_last)
    grad_out = torch.randn(5, 10, dtype=torch.float64)
    fast = run(copy.deepcopy(adapter), x, grad_out, "fused")
    reference = run(copy.deepcopy(adapter), x, grad_out, "reference")
    # BN with batch statistics cancels the conv bias: its gradient is 0 (the reference's is rounding noise)
    assert fast["grad_0.bias"].abs().max() == 0
    assert reference["grad_0.bias"].abs().max() < 1e-10 * reference["grad_0.weight"].abs().max()
    assert_close(fast, reference, rtol=1e-9, atol_scale=1e-10, skip=("grad_0.bias",))
    assert int(fast["1.num_batches_tracked"]) == 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_eval_mode_matches_reference_with_gradients(channels_last, monkeypatch):
    monkeypatch.setattr(backbone_module, "FUSED_CHUNK_ROWS", 40)
    torch.manual_seed(1)
    adapter = random_adapter(6, 10, torch.float64).eval()
    x = stage_output(5, 6, 4, torch.float64, channels_last)
    grad_out = torch.randn(5, 10, dtype=torch.float64)
    fast = run(copy.deepcopy(adapter), x, grad_out, "fused")
    reference = run(copy.deepcopy(adapter), x, grad_out, "reference")
    assert_close(fast, reference, rtol=1e-9, atol_scale=1e-10)
    set_exit_path("fused")
    with torch.inference_mode():
        torch.testing.assert_close(adapter(x), reference["out"], rtol=1e-9, atol=1e-12)


def test_fused_float32_is_as_accurate_as_the_reference():
    """In float32 both paths are compared with the float64 truth: the fused one is at least as close."""
    torch.manual_seed(2)
    adapter = random_adapter(16, 64, torch.float64)
    x = stage_output(8, 16, 8, torch.float64, False)
    grad_out = torch.randn(8, 64, dtype=torch.float64)
    truth = run(copy.deepcopy(adapter), x, grad_out, "reference")
    for mode in ("train", "eval"):
        fast = run(copy.deepcopy(adapter).float().train(mode == "train"), x.float(), grad_out.float(), "fused")
        slow = run(copy.deepcopy(adapter).float().train(mode == "train"), x.float(), grad_out.float(), "reference")
        expected = truth if mode == "train" else run(copy.deepcopy(adapter).eval(), x, grad_out, "reference")
        for key in ("out", "grad_x", "grad_0.weight", "grad_1.weight", "grad_1.bias", "1.running_mean",
                    "1.running_var"):
            scale = expected[key].abs().max()
            fast_error = ((fast[key].double() - expected[key]).abs().max() / scale).item()
            slow_error = ((slow[key].double() - expected[key]).abs().max() / scale).item()
            assert fast_error < max(1e-5, 2 * slow_error), (mode, key, fast_error, slow_error)


@pytest.mark.parametrize("training", [True, False])
def test_fused_under_bf16_autocast_is_as_accurate_as_the_reference(training):
    """Under autocast the fused path computes in float32 and returns bfloat16 like the reference's conv; both
    are compared with the float64 truth on the same bfloat16 input: the fused one is within bfloat16 rounding
    and at least as close as the reference."""
    torch.manual_seed(7)
    adapter = random_adapter(16, 32, torch.float32).train(training)
    x = stage_output(4, 16, 8, torch.float32, False).bfloat16()
    grad_out = torch.randn(4, 32, dtype=torch.float64)

    def run_path(path: str, autocast: bool) -> list[torch.Tensor]:
        model = copy.deepcopy(adapter) if autocast else copy.deepcopy(adapter).double()
        set_exit_path(path)
        h = (x if autocast else x.double()).detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(h)
        (out.double() * grad_out).sum().backward()
        return [out, h.grad, model[0].weight.grad, model[1].weight.grad, model[1].bias.grad, model[1].running_var]

    truth = run_path("reference", autocast=False)
    fast, slow = run_path("fused", autocast=True), run_path("reference", autocast=True)
    assert fast[0].dtype == slow[0].dtype == torch.bfloat16
    for name, f, r, t in zip(("out", "grad_x", "grad_w", "grad_gamma", "grad_beta", "running_var"), fast, slow, truth,
                             strict=True):
        scale = t.abs().max()
        fast_error = ((f.double() - t).abs().max() / scale).item()
        slow_error = ((r.double() - t).abs().max() / scale).item()
        assert fast_error < max(1e-2, slow_error), (name, fast_error, slow_error)


def test_fused_running_statistics_with_cumulative_momentum():
    torch.manual_seed(3)
    adapter = random_adapter(4, 6, torch.float64)
    adapter[1].momentum = None  # cumulative moving average: factor 1 / num_batches_tracked
    fast, reference = copy.deepcopy(adapter), copy.deepcopy(adapter)
    for _ in range(3):
        x = stage_output(3, 4, 4, torch.float64, False)
        set_exit_path("fused")
        fast(x)
        set_exit_path("reference")
        reference(x)
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(dict(fast.named_buffers())[name], buffer, rtol=1e-10, atol=1e-12)


def test_gradcheck_of_the_fused_training_function():
    torch.manual_seed(4)
    x = stage_output(3, 3, 2, torch.float64, False).requires_grad_()
    weight = torch.randn(5, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(5, dtype=torch.float64).add(0.5).requires_grad_()
    beta = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def pooled(*inputs):
        return backbone_module._FusedExitTrain.apply(*inputs, 1e-5)[0]

    assert torch.autograd.gradcheck(pooled, (x, weight, bias, gamma, beta))


def test_fast_path_is_taken_only_when_nothing_watches(monkeypatch):
    calls = []
    original = backbone_module._FusedExitTrain.apply
    monkeypatch.setattr(backbone_module._FusedExitTrain, "apply",
                        staticmethod(lambda *a: calls.append(1) or original(*a)))
    adapter = ConvExitAdapter(4, 16)
    x = torch.randn(2, 4, 4, 4)
    set_exit_path("fused")
    adapter(x)
    assert calls == [1]
    handle = adapter[2].register_forward_hook(lambda *_: None)  # the FLOPs counter hooks the leaves
    adapter(x)
    handle.remove()
    assert calls == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert adapter._fast_path_applies(x.bfloat16())  # on a CPU, in float32
        assert not adapter._fast_path_applies(x.double())
    set_exit_path("reference")
    assert not adapter._fast_path_applies(x)
    set_exit_path("auto")
    assert adapter._fast_path_applies(x)  # CPU: training and eval
    assert backbone_module.auto_fuses("cpu", training=True) and backbone_module.auto_fuses("cpu", training=False)
    assert backbone_module.auto_fuses("cuda", training=False) and not backbone_module.auto_fuses("cuda", training=True)
    assert not backbone_module.auto_fuses("cpu", training=True, in_channels=256, out_features=512)  # widens 2x
    assert backbone_module.auto_fuses("cpu", training=False, in_channels=256, out_features=512)
    with pytest.raises(ValueError, match="exit path"):
        set_exit_path("fast")


@pytest.mark.parametrize("method_class", [MIMMO, DUN])
def test_whole_method_same_outputs_gradients_and_statistics(method_class):
    """A training step and a prediction of MIMMO (M=2, R=2) and DUN through both paths, in float64."""
    torch.manual_seed(5)
    options = {"num_members": 2} if method_class is MIMMO else {}
    method = method_class(TINY, 3, 10, **options).double()
    x, y = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (6,))
    progress = Progress(epoch=1, num_epochs=2, fraction=0.5, num_train=100)
    results = {}
    for path in ("fused", "reference"):
        set_exit_path(path)
        model = copy.deepcopy(method)
        torch.manual_seed(6)  # the same batch and input repetition
        loss = model.training_loss(x, y, progress).loss
        loss.backward()
        model.eval()
        with torch.inference_mode():
            prediction = model(x)
        results[path] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()},
                         {n: b.clone() for n, b in model.named_buffers()}, prediction.logits, prediction.weights)
    (loss, grads, buffers, logits, weights), (ref_loss, ref_grads, ref_buffers, ref_logits, ref_weights) = (
        results["fused"], results["reference"])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        if name.endswith(".0.bias") and ".exits." in name:  # the conv bias before BN: 0 vs rounding noise
            assert grads[name].abs().max() == 0 and grad.abs().max() < 1e-9
            continue
        torch.testing.assert_close(grads[name], grad, rtol=1e-8, atol=1e-10 * max(grad.abs().max().item(), 1.0),
                                   msg=name)
    for name, buffer in ref_buffers.items():
        torch.testing.assert_close(buffers[name], buffer, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(weights, ref_weights)


def test_state_dict_keys_and_paper_costs_unchanged():
    set_exit_path("fused")
    adapter = ConvExitAdapter(64, 512)
    assert list(adapter.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                          "1.running_var", "1.num_batches_tracked"]
    cost = count_cost(MIMMO(ResNetFactory(), 3, 100, num_members=2), (3, 32, 32))
    assert (cost.flops, cost.params) == (172_815_936, 2_042_064)


def test_fused_path_under_torch_compile_runs_eagerly_and_matches(monkeypatch):
    """Under torch.compile the fused adapter is an eager island (a graph break), with the same outputs."""
    calls = []
    original = backbone_module._FusedExitTrain.apply
    monkeypatch.setattr(backbone_module._FusedExitTrain, "apply",
                        staticmethod(lambda *a: calls.append(1) or original(*a)))
    torch.manual_seed(8)
    adapter = random_adapter(4, 16, torch.float32)
    x = stage_output(3, 4, 4, torch.float32, False)
    reference = copy.deepcopy(adapter)
    set_exit_path("fused")
    compiled = torch.compile(lambda h: adapter(h) * 2.0, backend="eager", fullgraph=False)
    out = compiled(x)
    assert calls == [1]
    set_exit_path("reference")
    torch.testing.assert_close(out, reference(x) * 2.0, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
