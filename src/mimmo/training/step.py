"""One optimiser step of any method: eager, or captured once and replayed as a CUDA graph.

A step is: gradients cleared, the method's training loss, backward, the optimiser's update. On a GPU the
paper's small network makes that a few hundred small kernels, and an eager step is bound by the host
launching them (measured on an H200: 9.6 ms eager against 2.8 ms replayed as a graph for MIMO, M = 2).
:class:`TrainingStep` therefore replays the step as a CUDA graph, with the math of the eager step:

* Static shapes: every batch is copied into the same input buffers (the training loader drops the last
  incomplete batch, so every training batch has the same shape) and the step's results are read from the
  same output buffer.
* What changes between steps reaches the graph as tensors: the learning rate lives in a device tensor that
  the schedule overwrites in place (a capturable optimiser reads it), ``progress.fraction`` is a 0-dim
  device tensor filled before each replay, and random draws (repetition, mixing, dropout) come from the
  device's default generator, whose state advances with every replay exactly as with eager steps.
* What a method turns into Python control flow is its :meth:`Method.graph_key` (MIMMO's warm start): one
  graph is captured per key, so the warm start and the rest of the run each get their own.
* Before a key's capture, its first ``warmup_steps`` steps run eagerly (they are real training steps, and
  they let the libraries do their one-time work and the optimiser create its state outside the capture).

Every new graph is validated before it trains (:meth:`TrainingStep.capture`): the step's state is saved, the graph
captured, the eager step run on the batch as a reference, the state restored, the graph replayed once and its
results compared with the reference. A capture that raises, or a graph whose replay differs, is dropped: the state
is restored and training goes on with eager steps after one warning line (``train.cuda_graphs=auto``), or stops
with that line (``train.cuda_graphs=true``, :class:`CudaGraphFailure`, exit status 1). Graphs are released at
the end of each fit (:meth:`TrainingStep.release`).

The graph backend is a parameter: :class:`CudaGraphs` on a GPU; tests use stand-ins with the same contract (a
capture records a callable without running it; a replay runs what was recorded; ``recover`` cleans up after a
failed warm-up or capture).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from torch import Tensor

from mimmo import RunStopped
from mimmo.methods.base import LossOutput, Progress
from mimmo.training.recipe import graphs_capturable, setting

LossFn = Callable[[Tensor, Tensor, Progress], LossOutput]
log = logging.getLogger(__name__)

# train.precision values a graphed step runs under (32-bit, or bf16 autocast, which needs no loss scaler).
GRAPH_PRECISIONS = ("32", "32-true", "bf16-mixed")
# Lightning's names of fp16 mixed precision: its loss scaler is not applied by a manually stepped optimiser.
FP16_MIXED = ("16", "16-mixed")
# How close a validated graph's first replay must come to the eager step on the same batch and state. Both run the
# same kernels on the same inputs; what may differ is the order of sums in some backward kernels (atomics), which
# moves a gradient by about 1e-6 relative in float32 and 1e-3 in bf16. The loss and logged values: relative 1e-3
# (another batch changes them by far more). The parameters: 1e-2 of the learning rate (an Adam update moves a weight
# by about the learning rate, so a skipped update or one from another batch differs by ~lr) plus relative 1e-5 of
# the weight. Buffers (BatchNorm statistics): relative 1e-4, absolute 1e-6.
STATS_RTOL, STATS_ATOL = 1e-3, 1e-6
PARAM_LR_SHARE, PARAM_RTOL = 1e-2, 1e-5
BUFFER_RTOL, BUFFER_ATOL = 1e-4, 1e-6


class CudaGraphFailure(RunStopped):
    """A CUDA graph could not be captured or validated under ``train.cuda_graphs=true`` (exit status 1)."""


class GraphBackend(Protocol):
    """How a step is warmed up, captured and replayed."""

    def warmup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` eagerly, as the steps before a capture must run."""

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Record ``fn`` without running it; return what replays the recording."""

    def recover(self) -> None:
        """Undo what a warm-up or capture that raised left behind (streams, allocator, generator)."""


class CudaGraphs:
    """CUDA graph capture as PyTorch documents it for whole training steps (warm-up on a side stream), written out
    so that a capture that raises can be cleaned up: ``torch.cuda.graph.__exit__`` calls ``capture_end()`` before
    it restores the stream, so a failed ``capture_end`` leaves the capture stream current, the caching allocator
    in the graph's pool and the default generator in capture mode."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.previous_stream: torch.cuda.Stream | None = None  # current before a warm-up or capture
        self.open_graph: torch.cuda.CUDAGraph | None = None  # a capture whose capture_end did not complete
        self.capture_stream: torch.cuda.Stream | None = None
        self.pool: tuple[int, int] | None = None  # the open capture's memory pool (pool() needs a finished capture)

    def warmup(self, fn: Callable[[], None]) -> None:
        self.previous_stream = current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                fn()
        finally:
            current.wait_stream(side)
        self.previous_stream = None

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        torch.cuda.synchronize(self.device)
        gc.collect()  # a graph nothing refers to any more is destroyed now, never during the capture
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        self.previous_stream = current = torch.cuda.current_stream(self.device)
        self.capture_stream = side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        collecting = gc.isenabled()
        gc.disable()
        torch.cuda.set_stream(side)
        try:
            self.open_graph, self.pool = graph, torch.cuda.graph_pool_handle()
            graph.capture_begin(pool=self.pool)
            try:
                fn()
            finally:
                graph.capture_end()
            self.open_graph = None
        finally:
            torch.cuda.set_stream(current)
            if collecting:
                gc.enable()
        current.wait_stream(side)
        self.previous_stream = None
        return graph.replay

    def recover(self) -> None:
        """The stream that was current before, the device synchronised, and, when ``capture_end`` did not complete,
        the allocator out of the graph's pool and the default generator out of capture mode."""
        if self.previous_stream is not None:
            torch.cuda.set_stream(self.previous_stream)
            self.previous_stream = None
        graph, self.open_graph = self.open_graph, None
        if graph is not None:
            with torch.cuda.stream(self.capture_stream):
                if torch.cuda.is_current_stream_capturing():
                    raise RuntimeError("the capture stream is still capturing after capture_end")
            try:
                torch._C._cuda_endAllocateToPool(self.device.index or 0, self.pool)
            except RuntimeError as error:
                if "not currently recording" not in str(error):  # capture_end got as far as the allocator
                    raise
            generator = torch.cuda.default_generators[self.device.index or 0]
            state = generator.get_state()
            generator.graphsafe_set_state(torch.Generator(self.device))  # a fresh state: not in capture mode
            generator.set_state(state)
        torch.cuda.synchronize(self.device)


@dataclass
class Snapshot:
    """Copies of what a training step changes (parameters, buffers, optimiser state, random generators), restored in
    place: a captured graph keeps reading and writing the same memory."""

    tensors: list[tuple[Tensor, Tensor]]
    optimizer: torch.optim.Optimizer
    entries: dict[Tensor, dict[str, Any]]  # each parameter's optimiser state (its tensors restored in place)
    generators: list[tuple[torch.Generator, Tensor]]

    @classmethod
    def take(cls, tensors: list[Tensor], optimizer: torch.optim.Optimizer,
             generators: list[torch.Generator]) -> Snapshot:
        saved = [(t, t.detach().clone()) for t in tensors]
        entries = {parameter: dict(state) for parameter, state in optimizer.state.items()}
        saved += [(value, value.detach().clone()) for state in entries.values() for value in state.values()
                  if isinstance(value, Tensor)]
        return cls(saved, optimizer, entries, [(g, g.get_state()) for g in generators])

    def restore(self) -> None:
        with torch.no_grad():
            for live, copy in self.tensors:
                live.copy_(copy)
        for parameter in [p for p in self.optimizer.state if p not in self.entries]:
            del self.optimizer.state[parameter]  # state a failed first step created
        for parameter, entry in self.entries.items():
            state = self.optimizer.state[parameter]
            state.clear()
            state.update(entry)
        for generator, state in self.generators:
            generator.set_state(state)


class GraphMismatch(RuntimeError):
    """A graph's first replay differs from the eager step on the same batch and state."""


class TrainingStep:
    """Runs training steps and returns each step's ``[loss, *logs]`` as one device tensor (no host sync).

    ``backward(loss)`` is how eager steps back-propagate (Lightning's ``manual_backward``, which data-parallel
    training needs); captured steps call ``loss.backward()``. ``graphs`` None runs every step eagerly.
    ``module`` holds the parameters and buffers a step changes (saved and restored around a capture);
    ``required`` (``train.cuda_graphs=true``) makes a failed capture stop the run instead of falling back.
    """

    def __init__(self, loss_fn: LossFn, graph_key: Callable[[Progress], Hashable], prepare: Callable[[Tensor], Tensor],
                 optimizer: torch.optim.Optimizer, backward: Callable[[Tensor], None] | None = None,
                 graphs: GraphBackend | None = None, warmup_steps: int = 3, module: torch.nn.Module | None = None,
                 required: bool = False) -> None:
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 (a capture needs an eager step first), got {warmup_steps}")
        self.loss_fn, self.graph_key, self.prepare, self.optimizer = loss_fn, graph_key, prepare, optimizer
        self.backward = backward or Tensor.backward
        self.graphs, self.warmup_steps, self.module, self.required = graphs, warmup_steps, module, required
        self.log_keys: tuple[str, ...] | None = None  # the method's logged values, known after the first step
        self.graph: tuple[Hashable, Callable[[], None]] | None = None  # the current key and its captured step
        self.eager_steps: dict[Hashable, int] = {}
        self.captures = self.replays = 0
        self.fallback_reason: str | None = None
        self.images: Tensor | None = None  # the static buffers of the graphed step
        self.labels: Tensor | None = None
        self.fraction: Tensor | None = None
        self.stats: Tensor | None = None

    def __call__(self, images: Tensor, labels: Tensor, progress: Progress) -> Tensor:
        if self.graphs is None:
            return self.step(images, labels, progress, self.backward)
        key = self.graph_key(progress)
        if self.graph is not None and self.graph[0] == key:
            self.load(images, labels, progress)
            self.graph[1]()
            self.replays += 1
            return self.stats.clone()
        if self.eager_steps.get(key, 0) < self.warmup_steps:
            self.eager_steps[key] = self.eager_steps.get(key, 0) + 1
            return self.warm_up(images, labels, progress)
        return self.capture(key, images, labels, progress)

    def warm_up(self, images: Tensor, labels: Tensor, progress: Progress) -> Tensor:
        """An eager step through the backend's warm-up, on the static buffers."""
        self.load(images, labels, progress)
        snapshot = self.snapshot()
        try:
            static = replace(progress, fraction=self.fraction)
            self.graphs.warmup(lambda: self.keep(self.step(self.images, self.labels, static, self.backward)))
            return self.stats.clone()
        except Exception as error:
            self.fall_back(error, snapshot)
        return self.step(images, labels, progress, self.backward)

    def capture(self, key: Hashable, images: Tensor, labels: Tensor, progress: Progress) -> Tensor:
        """Capture the step of ``key``, then validate it: the eager step on this batch is the reference, the
        graph's first replay (from the same state) must match it. The capture runs while the static buffers still
        hold the previous batch, so a graph that kept a copy of its capture's batch is caught."""
        self.graph = None  # one graph at a time: the previous key's (the warm start's) is freed first
        snapshot = self.snapshot()
        try:
            static = replace(progress, fraction=self.fraction)
            self.optimizer.zero_grad(set_to_none=True)  # the capture allocates the gradients it writes
            self.captures += 1  # counted when tried: a capture that raises is one too
            replay = self.graphs.capture(lambda: self.keep(self.step(self.images, self.labels, static,
                                                                      Tensor.backward)))
            snapshot.restore()  # a capture runs nothing on a GPU; a stand-in's or a failed one may have
            self.load(images, labels, progress)
            reference = self.step(self.images, self.labels, static, self.backward).detach().clone()
            expected = [t.detach().clone() for t in self.changed_tensors()]
            snapshot.restore()
            replay()
            self.check_replay(reference, expected)
            self.replays += 1  # the validated replay is this batch's step
        except Exception as error:
            self.fall_back(error, snapshot)
            return self.step(images, labels, progress, self.backward)
        self.graph = (key, replay)
        return self.stats.clone()

    def check_replay(self, reference: Tensor, expected: list[Tensor]) -> None:
        """GraphMismatch naming the first value where the replay differs from the eager reference (tolerances:
        ``STATS_RTOL`` and the others above)."""
        keys = self.log_keys or ()
        for name, got, want in zip(keys, self.stats, reference, strict=True):
            if not torch.allclose(got, want, rtol=STATS_RTOL, atol=STATS_ATOL, equal_nan=True):
                raise GraphMismatch(f"the replayed step's {name} is {float(got):.6g}, the eager step's "
                                    f"{float(want):.6g}")
        lr = {id(p): float(group["lr"]) for group in self.optimizer.param_groups for p in group["params"]}
        for index, (live, want) in enumerate(zip(self.changed_tensors(), expected, strict=True)):
            got = live.detach()
            if not got.is_floating_point():
                close = torch.equal(got, want)
            elif id(live) in lr:
                close = torch.allclose(got, want, rtol=PARAM_RTOL, atol=PARAM_LR_SHARE * lr[id(live)])
            else:
                close = torch.allclose(got, want, rtol=BUFFER_RTOL, atol=BUFFER_ATOL, equal_nan=True)
            if not close:
                difference = (got.double() - want.double()).abs().max()
                raise GraphMismatch(f"after the replayed step, tensor {index} of the model's parameters and buffers "
                                    f"differs from the eager step's by up to {float(difference):.3g}")

    def fall_back(self, error: Exception, snapshot: Snapshot) -> None:
        """After a warm-up, capture or validation that failed: clean up, restore the saved state and go on eagerly
        (one warning line), or stop with that line when graphs are required."""
        reason = describe(error)
        try:
            self.graphs.recover()
            self.optimizer.zero_grad(set_to_none=True)
            snapshot.restore()
        except Exception as second:
            raise CudaGraphFailure(f"CUDA graph capture of the training step failed ({reason}) and the state before "
                                   f"it could not be restored ({describe(second)}); train.cuda_graphs=false trains "
                                   "with eager steps") from second
        self.graph, self.graphs, self.fallback_reason = None, None, reason
        if self.required:
            raise CudaGraphFailure(f"CUDA graph capture of the training step failed ({reason}); the run stops "
                                   "(train.cuda_graphs=true) and its folder keeps its last checkpoint; "
                                   "train.cuda_graphs=false trains with eager steps") from error
        log.warning("CUDA graph capture of the training step failed (%s); training goes on with eager steps (the "
                    "same math, slower); train.cuda_graphs=false skips the capture", reason)

    def snapshot(self) -> Snapshot:
        generators = [torch.default_generator]
        device = self.images.device
        if device.type == "cuda":
            generators.append(torch.cuda.default_generators[device.index or 0])
        return Snapshot.take(list(self.changed_tensors()), self.optimizer, generators)

    def changed_tensors(self) -> Iterator[Tensor]:
        """The parameters the optimiser updates, then the module's buffers (BatchNorm statistics)."""
        seen = set()
        for group in self.optimizer.param_groups:
            for parameter in group["params"]:
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    yield parameter
        if self.module is not None:
            yield from self.module.buffers()

    def release(self) -> None:
        """Drop the captured graph and the static buffers (at the end of a fit): nothing keeps them alive."""
        self.graph, self.graphs = None, None
        self.images = self.labels = self.fraction = self.stats = None

    def record(self) -> dict[str, Any]:
        """What metrics.json records of this fit's graphs (besides the setting)."""
        return {"used": self.replays > 0, "fallback_reason": self.fallback_reason, "captures": self.captures,
                "replays": self.replays}

    def keep(self, stats: Tensor) -> None:
        """Write a step's results into the static output buffer (allocated by the first, eager, step)."""
        if self.stats is None:
            self.stats = torch.empty_like(stats)
        self.stats.copy_(stats)

    def step(self, images: Tensor, labels: Tensor, progress: Progress, backward: Callable[[Tensor], None]) -> Tensor:
        """One eager step: clear gradients, loss, backward, update; returns ``[loss, *logs]``."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.loss_fn(self.prepare(images), labels, progress)
        backward(out.loss)
        self.optimizer.step()
        if self.log_keys is None:
            self.log_keys = ("loss", *out.logs)
        return torch.stack([out.loss.detach().float(), *(value.detach().float() for value in out.logs.values())])

    def load(self, images: Tensor, labels: Tensor, progress: Progress) -> None:
        """Copy a batch and the run's progress into the static buffers (allocated at the first step)."""
        if self.images is None:
            self.images, self.labels = torch.empty_like(images), torch.empty_like(labels)
            self.fraction = torch.zeros((), device=images.device)
        if images.shape != self.images.shape or labels.shape != self.labels.shape:
            raise ValueError(f"a graphed training step takes batches of one shape: images {tuple(self.images.shape)} "
                             f"and labels {tuple(self.labels.shape)}, got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.fraction.fill_(float(progress.fraction))


def describe(error: BaseException) -> str:
    """The error a failure started with (a failed capture_end raises on top of it), as one line."""
    while error.__context__ is not None and not error.__suppress_context__ and error.__cause__ is None:
        error = error.__context__
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def eager_reason(train: DictConfig, strategy: str) -> str | None:
    """Why the settings alone make steps eager (None: they allow CUDA graphs). ``strategy`` is Lightning's strategy
    name for the run: any data-parallel or multi-process one is eager, whatever the device count (a captured
    ``backward`` skips DDP's reducer)."""
    precision = str(train.precision)
    if strategy not in ("auto", "single_device"):
        return f"strategy {strategy} (a captured backward skips its gradient synchronisation)"
    if train.get("compile"):
        return "train.compile=true (the compiled step is not captured)"
    if precision not in GRAPH_PRECISIONS:
        return f"train.precision={precision} (graphs run with {' or '.join(GRAPH_PRECISIONS)})"
    if not graphs_capturable(train):
        return f"train.optimizer={setting(train, 'optimizer')} (its step cannot be captured)"
    return None


def prepare_optimizer(optimizer: torch.optim.Optimizer, graphs: bool, device: torch.device) -> None:
    """Put an Adam-style optimiser in the form the step needs, whatever a resumed checkpoint held.

    A graphed step on a GPU needs a capturable update (its step counts on the device) and the learning rate in
    a device tensor that the schedule overwrites in place (a float would be frozen into the graph at capture).
    An eager step takes the usual float and host-side step counts. A run may be cut off on one device and
    resumed on another, so the form is set after the checkpoint is loaded, at the first step."""
    capturable = graphs and device.type == "cuda"
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if graphs else lr
        if "capturable" in group:
            group["capturable"] = capturable
        for parameter in group["params"]:
            state = optimizer.state.get(parameter)
            if state and isinstance(state.get("step"), Tensor):
                state["step"] = state["step"].to(device=device if capturable else "cpu", dtype=torch.float32)
