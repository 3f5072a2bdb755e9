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

The graph backend is a parameter: :class:`CudaGraphs` on a GPU; tests use a stand-in with the same
contract (a capture records a callable without running it; a replay runs what was recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Protocol

import torch
from torch import Tensor

from mimmo.methods.base import LossOutput, Progress

LossFn = Callable[[Tensor, Tensor, Progress], LossOutput]


class GraphBackend(Protocol):
    """How a step is warmed up, captured and replayed."""

    def warmup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` eagerly, as the steps before a capture must run."""

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Record ``fn`` without running it; return what replays the recording."""


class CudaGraphs:
    """CUDA graph capture as PyTorch documents it for whole training steps (warm-up on a side stream)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def warmup(self, fn: Callable[[], None]) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay


class TrainingStep:
    """Runs training steps and returns each step's ``[loss, *logs]`` as one device tensor (no host sync).

    ``backward(loss)`` is how eager steps back-propagate (Lightning's ``manual_backward``, which data-parallel
    training needs); captured steps call ``loss.backward()``. ``graphs`` None runs every step eagerly.
    """

    def __init__(self, loss_fn: LossFn, graph_key: Callable[[Progress], Hashable], prepare: Callable[[Tensor], Tensor],
                 optimizer: torch.optim.Optimizer, backward: Callable[[Tensor], None] | None = None,
                 graphs: GraphBackend | None = None, warmup_steps: int = 3) -> None:
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 (a capture needs an eager step first), got {warmup_steps}")
        self.loss_fn, self.graph_key, self.prepare, self.optimizer = loss_fn, graph_key, prepare, optimizer
        self.backward = backward or Tensor.backward
        self.graphs, self.warmup_steps = graphs, warmup_steps
        self.log_keys: tuple[str, ...] | None = None  # the method's logged values, known after the first step
        self.replays: dict[Hashable, Callable[[], None]] = {}  # the captured step of the current key
        self.eager_steps: dict[Hashable, int] = {}
        self.images: Tensor | None = None  # the static buffers of the graphed step
        self.labels: Tensor | None = None
        self.fraction: Tensor | None = None
        self.stats: Tensor | None = None

    def __call__(self, images: Tensor, labels: Tensor, progress: Progress) -> Tensor:
        if self.graphs is None:
            return self.step(images, labels, progress, self.backward)
        key = self.graph_key(progress)
        self.load(images, labels, progress)
        progress = replace(progress, fraction=self.fraction)
        if key not in self.replays:
            if self.eager_steps.get(key, 0) < self.warmup_steps:
                self.eager_steps[key] = self.eager_steps.get(key, 0) + 1
                self.graphs.warmup(lambda: self.keep(self.step(self.images, self.labels, progress, self.backward)))
                return self.stats.clone()
            # One graph at a time: a new key (the warm start has ended) frees the previous graph's memory.
            self.optimizer.zero_grad(set_to_none=True)  # the capture allocates the gradients it writes
            self.replays = {key: self.graphs.capture(
                lambda: self.keep(self.step(self.images, self.labels, progress, Tensor.backward)))}
        self.replays[key]()
        return self.stats.clone()

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
