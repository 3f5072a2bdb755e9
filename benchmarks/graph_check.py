"""One method's graphed training step against eager steps through `mimmo train`'s path, with a verdict (not a test).

Two short runs of the paper's recipe on CIFAR-100-shaped random data (2 epochs of 5 steps, one warm-start epoch for
MIMMO and DUN): with the default step (``train.cuda_graphs=auto``: captured, validated and replayed on a GPU) and
with ``train.cuda_graphs=false``, both with the learning rate in a tensor (the graphed step's optimiser numerics).
It passes when the graphed run replayed its steps (a capture per warm-start phase, no fallback, every step after
the three warm-up steps of a phase a replay) and its first ten losses match the eager run's within ``LOSS_RTOL``.

``--inject-failure`` makes every capture fail the way a host sync inside a captured step does on a GPU (there: a
real ``.item()`` during the capture); it passes when the run falls back once, finishes, and its losses match.
``--compile`` trains with ``train.compile=true`` (eager steps under ``auto``) and compares with eager steps too.
``--dry`` runs the logic on a CPU: a tiny network and a stand-in that records a step at capture and runs it at
replay (as ``tests/test_graphed_step.py`` does). One method per process, so one failure cannot poison another.

    python benchmarks/graph_check.py --method mimmo --out graph-check-mimmo.json [--inject-failure] [--compile] [--dry]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from epoch_time import data_overrides, write_cifar100

# Ten Adam steps of float32 sums in another order (atomics in some backward kernels) move the loss by far less than
# 1e-3 relative; a step on a stale batch, or one whose update was skipped, moves it by more than 1e-2.
LOSS_RTOL = 1e-3
COMPILE_RTOL = 1e-2  # compiled kernels fuse and reorder float32 arithmetic
STEPS_PER_EPOCH, EPOCHS, WARMUP_STEPS = 5, 2, 3
TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4"]


class StandInGraphs:
    """On a CPU (``--dry``): a capture records the step without running it, a replay runs it."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def warmup(self, fn: Callable[[], None]) -> None:
        fn()

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing (injected)")
        return fn

    def recover(self) -> None:
        pass


def run(method: str, root: Path | None, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Train one run in this process; its losses step by step, its cuda_graphs record and its time."""
    from mimmo.config import compose
    from mimmo.training import train
    from mimmo.training.step import TrainingStep

    losses: list[torch.Tensor] = []
    original = TrainingStep.__call__

    def recorded(self, images, labels, progress):
        stats = original(self, images, labels, progress)
        losses.append(stats[0].detach().clone())
        return stats

    TrainingStep.__call__ = recorded
    try:
        start = time.perf_counter()
        cfg = compose(["experiment=paper", *data_overrides(root), f"method={method}",
                       "train.progress_bar=false", "evaluation.shifted=false", *overrides])
        metrics = train(cfg, run_dir)
    finally:
        TrainingStep.__call__ = original
    return {"seconds": time.perf_counter() - start, "losses": [float(x) for x in losses],
            "cuda_graphs": metrics["cuda_graphs"]}


def verdict(method: str, checked: dict[str, Any], eager: dict[str, Any], mode: str, expect_graphs: bool
            ) -> tuple[bool, str]:
    """Whether ``checked`` passes against ``eager``, and why (one line)."""
    first, reference = checked["losses"][:10], eager["losses"][:10]
    if len(first) < 10 or len(reference) < 10:
        return False, f"fewer than ten steps ({len(first)} and {len(reference)})"
    rtol = COMPILE_RTOL if mode == "compile" else LOSS_RTOL
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(first, reference, strict=True))
    if not worst <= rtol:
        return False, f"the first ten losses differ from eager steps' by up to {worst:.3g} relative (> {rtol:g})"
    graphs = checked["cuda_graphs"]
    if mode == "inject":
        if not graphs["fallback_reason"] or graphs["used"]:
            return False, f"the injected capture failure did not fall back once: {graphs}"
        return True, f"fell back ({graphs['fallback_reason']}); losses within {worst:.3g} relative"
    if expect_graphs:
        phases = 2 if method in ("mimmo", "dun") else 1
        replays = EPOCHS * STEPS_PER_EPOCH - WARMUP_STEPS * phases
        if graphs["fallback_reason"] or (graphs["captures"], graphs["replays"]) != (phases, replays):
            return False, (f"expected {phases} capture(s) and {replays} replays without fallback, got "
                           f"{graphs['captures']}, {graphs['replays']}, fallback {graphs['fallback_reason']!r}")
    return True, f"losses within {worst:.3g} relative; {graphs['captures']} captures, {graphs['replays']} replays"


def check(args: argparse.Namespace) -> dict[str, Any]:
    from mimmo.training import module as training
    from mimmo.training.step import TrainingStep, prepare_optimizer

    mode = "compile" if args.compile else "inject" if args.inject_failure else "graphs"
    work = Path(tempfile.mkdtemp(prefix=f"mimmo-graph-check-{args.method}-"))
    train_size = STEPS_PER_EPOCH * 64
    root = None if args.dry else work / "data"  # a dry run: the embedded dataset
    if root is not None:
        write_cifar100(root, num_train=train_size * 10 // 9 + 64, num_test=200)
    common = [f"train.epochs={EPOCHS}", f"data.train_size={train_size}", "train.warm_start_epochs=1",
              *(TINY if args.dry else [])]
    # The eager reference and the checked run share the graphed step's optimiser numerics (lr in a tensor).
    training.prepare_optimizer = lambda optimizer, graphs, device: prepare_optimizer(optimizer, True, device)
    if args.dry:
        training.cuda_graphs_available = lambda device, world_size: True
        training.make_graph_backend = lambda device: StandInGraphs(fail=args.inject_failure)
    elif args.inject_failure:
        original = TrainingStep.step

        def sync_inside_the_capture(self, images, labels, progress, backward):
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                images.sum().item()  # a host sync: refused during a capture, which it invalidates
            return original(self, images, labels, progress, backward)
        TrainingStep.step = sync_inside_the_capture
    result: dict[str, Any] = {"method": args.method, "mode": mode}
    try:
        extra = ["train.compile=true"] if args.compile else []
        checked = run(args.method, root, work / "checked", [*common, *extra])
        eager = run(args.method, root, work / "eager", [*common, "train.cuda_graphs=false"])
        expect_graphs = mode == "graphs" and (args.dry or torch.cuda.is_available())
        result["passed"], result["why"] = verdict(args.method, checked, eager, mode, expect_graphs)
        result |= {"checked": checked, "eager": eager}
    except Exception:  # a check that fails is a result: recorded, and this process says so in its exit status
        result["passed"], result["why"] = False, traceback.format_exc().strip().splitlines()[-1]
        result["traceback"] = traceback.format_exc()[-3000:]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--inject-failure", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--dry", action="store_true", help="on a CPU: tiny network, stand-in graph backend")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = check(args)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.method} ({result['mode']}): {'PASS' if result['passed'] else 'FAIL'}: {result['why']}", flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
