"""Training and inference throughput of every method on the paper's backbone, in one process (benchmarks/README.md).

For each method (3x32x32 inputs, 100 classes, the paper's ResNet, batch 64, R = 2 where the method repeats):

* training images/s through the project's own Lightning path (``mimmo.training.MethodModule`` driven by
  ``Trainer.fit`` over ``warmup + steps`` batches of an in-memory random uint8 dataset, no validation,
  logging, checkpointing or progress bar; only the ``steps`` batches after the warm-up are timed, from the
  start of the first timed batch to the end of its last, optimiser step included);
* training images/s through a bare PyTorch loop on the same method object, data and normaliser: uint8 batch
  from the same ``BatchLoader`` -> device -> ``MethodModule.prepare`` (normalise) -> ``MethodModule.training_loss``
  -> backward -> Adam step. Same math; the ratio of the two times is the framework's overhead;
* inference images/s of the predictive mixture (``method(x)`` then the mixture's log-probabilities, under
  ``torch.inference_mode``), and the peak memory of every phase.

"Images" are loader images: 64 per training step (with R = 2 the network sees 128 rows). Every phase is
repeated ``--repeats`` times in rounds interleaved across the methods (round 1 of every method, then round 2,
...), each after its warm-up, so that a slow drift of the machine touches every method alike; the JSON holds
every value (in round order), the median, min and max. It also holds MIMMO's time per image over MIMO's next to their
FLOPs ratio, and, for M = 4, MIMMO's and MIMO's inference speed over the Deep Ensemble's next to the FLOPs
ratios, with the targets of the speed issue. Usage:

    python benchmarks/throughput.py --methods all --device auto --steps 20 --repeats 3 \
        --out benchmarks/results/<name>.json [--channels-last] [--bf16] [--compile] [--exit-path fused]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ALL_METHODS = ["base", "ensemble", "mc_dropout", "dun", "early_exit", "mimo", "datamux", "mixmo", "mimmo_gamma",
               "mimmo"]
MULTI_MEMBER = {"ensemble", "mimo", "datamux", "mixmo", "mimmo_gamma", "mimmo"}
INPUT_SHAPE, NUM_CLASSES = (3, 32, 32), 100
TARGETS = {"mimmo_over_mimo_time_per_flops_ratio_max": 1.2, "framework_overhead_max": 1.05,
           "m4_speedup_over_ensemble_min_fraction_of_flops_ratio": 0.8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all",
                        help="'all' or a comma-separated list of " + ",".join(ALL_METHODS))
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps before each timed window "
                        "(on a GPU at least 4: the graphed step runs 3 eager steps before its capture)")
    parser.add_argument("--eager", action="store_true",
                        help="train.cuda_graphs=false: eager training steps on a GPU too (graphed by default there)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (loader images per step)")
    parser.add_argument("--infer-batch", type=int, default=None,
                        help="inference batch (default 500 on GPU, 128 on CPU)")
    parser.add_argument("--infer-batches", type=int, default=None, help="timed inference batches per repeat "
                        "(default 10 on GPU, 2 on CPU)")
    parser.add_argument("--m4", default="mimo,mimmo,ensemble",
                        help="methods also measured (inference only) at M=4 for the ensemble comparison; '' skips")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last memory format (train.channels_last)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (Lightning precision bf16-mixed)")
    parser.add_argument("--compile", action="store_true",
                        help="train.compile=true (the training loss through torch.compile) and a compiled forward")
    parser.add_argument("--exit-path", default="auto", choices=["auto", "fused", "reference"],
                        help="how MIMMO/DUN's conv exit adapters compute (mimmo.models.backbone.set_exit_path)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-lightning", action="store_true", help="skip the Lightning path (bare loop only)")
    parser.add_argument("--width", type=float, default=1.0,
                        help="model.width (1 = the paper's backbone); a tiny width makes the step cheap, so that "
                             "Lightning's time minus the bare loop's is the framework's own cost per step")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a phase: CUDA's allocator peak on a GPU; on CPU the peak resident set size above the
    phase's start, sampled every 2 ms from /proc (approximate: it sees what the allocator took from the OS)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._start = self._rss_bytes()
            self._peak = self._start

            def sample() -> None:
                while not self._stop.wait(0.002):
                    self._peak = max(self._peak, self._rss_bytes())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss_bytes())
            self.peak_mb = (self._peak - self._start) / 2**20


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / statistics.median(values) if statistics.median(values) else None,
            "values": values}


# ------------------------------------------------------------------------------------------------ the setup


def fabricated_splits(num_train: int, seed: int = 0):
    """CIFAR-100-shaped random uint8 images with 100 classes, held in memory (the speed does not depend on them)."""
    from mimmo.data.datasets import ImageSet, Splits

    generator = torch.Generator().manual_seed(seed)

    def image_set(n: int) -> ImageSet:
        return ImageSet(torch.randint(0, 256, (n, *INPUT_SHAPE), dtype=torch.uint8, generator=generator),
                        torch.randint(0, NUM_CLASSES, (n,), generator=generator))

    return Splits("cifar100", image_set(num_train), image_set(64), image_set(64), NUM_CLASSES)


def method_config(name: str, args: argparse.Namespace, num_members: int | None = None):
    from mimmo.config import compose

    overrides = [f"method={name}", "data=cifar100", f"train.batch_size={args.batch_size}",
                 "train.warm_start_epochs=0",  # time the steady state: MIMMO/DUN learn theta (95 of 100 epochs)
                 f"train.precision={'bf16-mixed' if args.bf16 else '32-true'}",
                 f"train.channels_last={'true' if args.channels_last else 'false'}",
                 "train.progress_bar=false", "evaluation.shifted=false", f"model.width={args.width}"]
    if args.compile:
        overrides.append("train.compile=true")
    if args.eager:
        overrides.append("train.cuda_graphs=false")
    if num_members is not None:
        overrides.append(f"method.num_members={num_members}")
    return compose(overrides)


def autocast(args: argparse.Namespace, device: torch.device):
    if args.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class WindowTimer:
    """Lightning callback: wall time from the start of batch ``first`` to the end of batch ``last``."""

    def __new__(cls, *args: Any, **kwargs: Any):  # subclass Callback lazily (lightning imports slowly)
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self, first: int, last: int, device: torch.device) -> None:
                self.first, self.last, self.device = first, last, device
                self.seconds: float | None = None

            def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
                if batch_idx == self.first:
                    synchronize(self.device)
                    self._start = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                if batch_idx == self.last:
                    synchronize(self.device)
                    self.seconds = time.perf_counter() - self._start

        return _Timer(*args, **kwargs)


def lightning_window(module, args: argparse.Namespace, device: torch.device) -> tuple[float, float | None]:
    """Seconds for ``args.steps`` training steps through ``Trainer.fit`` (after ``args.warmup``), peak memory."""
    import lightning as L

    timer = WindowTimer(args.warmup, args.warmup + args.steps - 1, device)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision="bf16-mixed" if args.bf16 else "32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    with PeakMemory(device) as memory:
        trainer.fit(module)
    assert timer.seconds is not None, "the timed window did not complete"
    return timer.seconds, memory.peak_mb


def bare_window(module, args: argparse.Namespace, device: torch.device) -> tuple[float, float | None]:
    """The same steps as the Lightning path without the framework: batch (on the device) -> the project's
    ``TrainingStep`` (normalise -> loss -> backward -> Adam), replayed as a CUDA graph where the Lightning path
    replays one (``train.cuda_graphs``)."""
    from mimmo.data.loader import BatchLoader
    from mimmo.training.module import cuda_graphs_available, make_graph_backend
    from mimmo.training.step import TrainingStep, eager_reason, prepare_optimizer

    method = module.method
    module.to(device)
    method.train()
    optimizer = torch.optim.Adam(method.parameters(), lr=module.train_cfg.lr, weight_decay=0.0)
    graphs = (module.train_cfg.cuda_graphs in ("auto", True) and cuda_graphs_available(device, 1)
              and eager_reason(module.train_cfg, "single_device") is None)
    prepare_optimizer(optimizer, graphs, device)
    loader = BatchLoader(module.data.train.to(device), args.batch_size, shuffle=True, seed=module.seed,
                         streams=method.data_streams)
    batches: Iterator = iter(loader)
    num_batches = len(loader)
    train_step = TrainingStep(module.training_loss, method.graph_key, module.prepare, optimizer,
                              graphs=make_graph_backend(device) if graphs else None, module=method)

    def step(index: int) -> None:
        images, labels = next(batches)
        with autocast(args, device):
            train_step(images, labels, module.progress(0, index, num_batches))

    for index in range(args.warmup):
        step(index)
    with PeakMemory(device) as memory:
        synchronize(device)
        start = time.perf_counter()
        for index in range(args.warmup, args.warmup + args.steps):
            step(index)
        synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mb


def inference_window(module, args: argparse.Namespace, device: torch.device, images: torch.Tensor,
                     predict: Callable) -> tuple[float, float | None]:
    """Seconds for ``args.infer_batches`` batches of the predictive mixture after one warm-up batch."""
    method = module.method
    module.to(device)
    method.eval()
    try:
        with torch.inference_mode():
            predict(images)
            with PeakMemory(device) as memory:
                synchronize(device)
                start = time.perf_counter()
                for _ in range(args.infer_batches):
                    predict(images)
                synchronize(device)
                seconds = time.perf_counter() - start
    finally:
        method.train()
    return seconds, memory.peak_mb


@dataclass
class Job:
    """One method's setup and its measurements so far (one entry per round, in every phase)."""

    key: str
    module: Any
    predict: Callable
    infer_images: torch.Tensor
    train: bool
    meta: dict[str, Any]
    phases: dict[str, list[tuple[float, float | None]]] = field(
        default_factory=lambda: {"train_lightning": [], "train_bare": [], "inference": []})
    load_average: list[float | None] = field(default_factory=list)
    seconds: float = 0.0


def setup_job(name: str, args: argparse.Namespace, device: torch.device, num_members: int | None = None,
              train: bool = True) -> Job:
    """Build the method (seeded, as ``mimmo train`` does), its Lightning module, data and prediction function."""
    from mimmo.data.datasets import Normalizer
    from mimmo.evaluation.cost import count_cost
    from mimmo.methods.base import mixture_log_probs
    from mimmo.training import MethodModule, build_method_from_config

    cfg = method_config(name, args, num_members)
    steps_per_repeat = args.warmup + args.steps
    splits = fabricated_splits(max(steps_per_repeat * args.batch_size, args.infer_batch))
    method = build_method_from_config(cfg, INPUT_SHAPE, NUM_CLASSES)
    cost = count_cost(method, INPUT_SHAPE)
    normalizer = Normalizer.fit(splits.train.images)
    module = MethodModule(method, normalizer, splits, cfg)
    if args.channels_last:
        method.to(memory_format=torch.channels_last)  # as mimmo.training.train does
    forward = torch.compile(method.forward) if args.compile else method  # (train.compile compiles the loss)

    def predict(images: torch.Tensor) -> torch.Tensor:
        with autocast(args, device):
            prediction = forward(module.prepare(images))
        return mixture_log_probs(prediction.logits, prediction.weights)

    key = name if num_members is None else f"{name}_m{num_members}"
    meta = {"num_members": method.num_members, "num_exits": method.num_exits, "flops": cost.flops,
            "params": cost.params}
    return Job(key, module, predict, splits.train.images[:args.infer_batch], train, meta)


def measure_round(job: Job, args: argparse.Namespace, device: torch.device) -> None:
    """One repeat of every phase of ``job``: Lightning training, bare training, inference."""
    start, load_before = time.perf_counter(), load_average()
    if job.train and not args.no_lightning:
        job.phases["train_lightning"].append(lightning_window(job.module, args, device))
    if job.train:
        job.phases["train_bare"].append(bare_window(job.module, args, device))
    job.phases["inference"].append(
        inference_window(job.module, args, device, job.infer_images.to(device), job.predict))
    job.load_average.append(max(v for v in (load_before, load_average(), -1.0) if v is not None))
    job.seconds += time.perf_counter() - start


def job_result(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    result = dict(job.meta)
    for phase, runs in job.phases.items():
        if not runs:
            continue
        images = args.batch_size * args.steps if phase.startswith("train") else args.infer_batch * args.infer_batches
        memory = [m for _, m in runs if m is not None]
        result[phase] = {"images_per_s": summary([images / s for s, _ in runs]),
                         "ms_per_image": summary([1e3 * s / images for s, _ in runs]),
                         "peak_memory_mb": max(memory) if memory else None}
    if job.phases["train_lightning"] and job.phases["train_bare"]:
        pairs = list(zip(job.phases["train_lightning"], job.phases["train_bare"], strict=False))
        result["framework_overhead"] = summary([lit / bare for (lit, _), (bare, _) in pairs])
        result["framework_ms_per_step"] = summary([1e3 * (lit - bare) / args.steps for (lit, _), (bare, _) in pairs])
    result["benchmark_seconds"] = job.seconds
    # per round, the larger 1-minute load average of its start and end: above the threads this process uses,
    # something else was running on the machine during that round
    result["load_average"] = job.load_average
    return result


# ------------------------------------------------------------------------------------------------ the report


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The speed issue's ratios next to the FLOPs ratios (the ideals) and its targets."""
    out: dict[str, Any] = {}
    mimo, mimmo = results.get("mimo"), results.get("mimmo")
    if mimo and mimmo:
        flops_ratio = mimmo["flops"] / mimo["flops"]
        limit = TARGETS["mimmo_over_mimo_time_per_flops_ratio_max"] * flops_ratio
        entry: dict[str, Any] = {"flops_ratio": flops_ratio, "target_max": limit}
        for phase in ("train_lightning", "train_bare", "inference"):
            if phase in mimo and phase in mimmo:
                ratio = mimmo[phase]["ms_per_image"]["median"] / mimo[phase]["ms_per_image"]["median"]
                entry[f"{phase}_time_ratio"] = ratio  # of the medians
                entry[f"{phase}_met"] = ratio <= limit
                entry[f"{phase}_time_ratio_per_round"] = [  # the same round of both: robust to slow drifts
                    a / b for a, b in zip(mimmo[phase]["ms_per_image"]["values"],
                                          mimo[phase]["ms_per_image"]["values"], strict=False)]
        out["mimmo_over_mimo_time_per_image"] = entry
    overheads = {name: r["framework_overhead"]["median"] for name, r in results.items() if "framework_overhead" in r}
    if overheads:
        out["framework_overhead"] = {"per_method": overheads, "target_max": TARGETS["framework_overhead_max"],
                                     "met": {n: v <= TARGETS["framework_overhead_max"] for n, v in overheads.items()},
                                     "all_met": all(v <= TARGETS["framework_overhead_max"] for v in overheads.values())}
    ensemble = results.get("ensemble_m4")
    if ensemble:
        m4: dict[str, Any] = {}
        for name in ("mimmo", "mimo"):
            r = results.get(f"{name}_m4")
            if r is None:
                continue
            flops_ratio = ensemble["flops"] / r["flops"]
            speedup = r["inference"]["images_per_s"]["median"] / ensemble["inference"]["images_per_s"]["median"]
            target = TARGETS["m4_speedup_over_ensemble_min_fraction_of_flops_ratio"] * flops_ratio
            per_round = [a / b for a, b in zip(r["inference"]["images_per_s"]["values"],
                                               ensemble["inference"]["images_per_s"]["values"], strict=False)]
            m4[name] = {"inference_speedup_over_ensemble": speedup, "flops_ratio": flops_ratio,
                        "fraction_of_ideal": speedup / flops_ratio, "target_min": target, "met": speedup >= target,
                        "speedup_per_round": per_round}
        out["m4_inference_over_ensemble"] = m4
    return out


def load_average() -> float | None:
    """The system's 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import lightning

    info: dict[str, Any] = {
        "torch": torch.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "input_shape": list(INPUT_SHAPE), "num_classes": NUM_CLASSES,
        "batch_size": args.batch_size, "repetitions": 2, "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "infer_batch": args.infer_batch, "infer_batches": args.infer_batches,
        "precision": "bf16-mixed" if args.bf16 else "32-true", "channels_last": args.channels_last,
        "compile": args.compile, "exit_path": args.exit_path, "eager": args.eager,
        "model_width": args.width,
        "lightning_timing": "Trainer.fit over warmup+steps batches, the steps after the warm-up timed by a callback "
                            "(start of the first timed batch to the end of the last, optimiser step included)",
        "bare_loop": "same BatchLoader, device transfer, MethodModule.prepare, MethodModule.training_loss, backward, "
                     "Adam",
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    else:
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    info["device_name"] = line.split(":", 1)[1].strip()
                    break
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.infer_batch is None:
        args.infer_batch = 500 if device.type == "cuda" else 128
    if args.infer_batches is None:
        args.infer_batches = 10 if device.type == "cuda" else 2
    methods = ALL_METHODS if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {ALL_METHODS}")
    m4 = [m.strip() for m in args.m4.split(",") if m.strip()]
    import lightning  # noqa: F401  (it sets its loggers' levels on import: quieten them after)

    for logger in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from mimmo.models.backbone import set_exit_path

    set_exit_path(args.exit_path)
    report: dict[str, Any] = {"environment": environment(args, device), "methods": {}}
    jobs = [setup_job(name, args, device) for name in methods]
    jobs += [setup_job(name, args, device, num_members=4, train=False) for name in m4]
    for round_index in range(args.repeats):  # interleaved: round r of every job, then round r + 1
        for job in jobs:
            measure_round(job, args, device)
            speeds = {phase: round(args.batch_size * args.steps / runs[-1][0] if phase.startswith("train")
                                   else args.infer_batch * args.infer_batches / runs[-1][0], 1)
                      for phase, runs in job.phases.items() if runs}
            print(f"# round {round_index + 1}/{args.repeats} {job.key}: images/s {json.dumps(speeds)} "
                  f"(load {job.load_average[-1]:.1f})", file=sys.stderr, flush=True)
        report["methods"] = {job.key: job_result(job, args) for job in jobs}
        report["ratios"] = ratios(report["methods"])
        if args.out:  # written after every round, so a run cut short keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    report["ratios"] = ratios(report["methods"])
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
