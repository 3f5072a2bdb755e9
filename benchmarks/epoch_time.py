"""Epoch times of `mimmo train`'s real path per method, and what they make of the paper's grid (not a test).

For each method the script trains `mimmo train experiment=paper data=cifar100 method=<m>` (the paper's recipe and
network, M = 2) for a few epochs on CIFAR-100-shaped random data, which it first writes in the standard pickle
format (`cifar-100-python/train` and `test`), so the real loader, run folder, checkpoints, validation and final
evaluation (25 shifted sets) all run. Times come from hooks on the training module: the training part of an
epoch (first batch to last, device synchronised) and its validation, both as medians over the epochs after the
first (the first holds the warm-up steps and the CUDA-graph capture). With `--train-size` below 45 000 the
paper's epoch is estimated as train part x (703 / steps measured) + validation part.

Each method is measured with the default step (graphed on a GPU) and, with `--eager`, again with
`train.cuda_graphs=false`. `--aggregate K` then starts K `mimmo train` processes of one method at once (the
joblib launcher's situation) and reports their images/s together against one run's. The estimate of the
`paper_tables` grid (66 runs x 100 epochs + evaluation) scales each run from the measured M = 2 rates (the
Ensemble's epoch by M / 2; the multi-input methods' FLOPs differ by under 3% between M = 2 and 8).

    python benchmarks/epoch_time.py --out benchmarks/results/gpu-epoch-times.json [--epochs 4] [--eager]
        [--aggregate 4] [--methods all] [--train-size 45000]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ALL_METHODS = ["base", "ensemble", "mc_dropout", "dun", "early_exit", "mimo", "datamux", "mixmo", "mimmo_gamma",
               "mimmo"]
PAPER_TRAIN_SIZE, BATCH = 45_000, 64
# paper_tables: (method, M) -> runs (three seeds each); the methods without M run once per seed
PAPER_TABLES = {**{(m, k): 3 for m in ("ensemble", "mimo", "datamux", "mixmo", "mimmo_gamma", "mimmo")
                   for k in (2, 4, 8)},
                **{(m, 1): 3 for m in ("base", "mc_dropout", "dun", "early_exit")}}


# A method not measured takes the epoch of one that was, with about as many kernels per step (a GPU step of the
# paper's network is bound by launching them): the Ensemble M Base networks; the exit methods MIMMO's network.
PROXIES = {"ensemble": "base", "mc_dropout": "base", "dun": "mimmo", "early_exit": "mimmo", "mimmo_gamma": "mimmo",
           "datamux": "mimo", "mixmo": "mimo", "base": "mimo", "mimo": "mimmo", "mimmo": "mimo"}
CIFAR_TEST_SIZE = 10_000


def paper_tables_estimate(measured: dict[str, dict[str, Any]], test_size: int) -> tuple[float, dict[str, str]]:
    """Hours of the ``paper_tables`` grid (100 epochs + evaluation per run) from the methods measured, and which
    measured method stood in for each one that was not. Evaluation times scale to the 10 000 test images."""
    seconds, proxies = 0.0, {}
    timed = [m for m, e in measured.items() if "epoch_seconds" in e]
    for (method, members), runs in PAPER_TABLES.items():
        source, seen = method, set()
        while source not in timed:
            seen.add(source)
            source = PROXIES[source]
            if source in seen:
                source = timed[0]
        if source != method:
            proxies[method] = source
        entry = measured[source]
        scale = members / 2 if method == "ensemble" == source else members if method == "ensemble" else 1.0
        evaluate = entry["evaluate_seconds"] * CIFAR_TEST_SIZE / test_size
        seconds += runs * (100 * entry["epoch_seconds"] * scale + evaluate)
    return seconds / 3600, proxies


def write_cifar100(root: Path, num_train: int, num_test: int, seed: int = 0) -> None:
    """Random CIFAR-100-shaped data in the python version's pickle format."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, count in (("train", num_train), ("test", num_test)):
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, count).tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_overrides(root: Path | None) -> list[str]:
    """The random CIFAR-100 pickles under ``root``; None: the embedded dataset (``--embedded``, for a CPU dry run)."""
    return ["data=embedded"] if root is None else ["data=cifar100", f"data.root={root}"]


def timed_run(method: str, data_root: Path | None, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Train one run in this process with hooks that time each epoch's training and validation parts."""
    from mimmo.config import compose
    from mimmo.training import MethodModule, train

    times: dict[str, list[float]] = {"train": [], "validation": []}
    marks: dict[str, float] = {}
    steps: list[int] = []
    hooks = {name: getattr(MethodModule, name) for name in (
        "on_train_epoch_start", "on_train_epoch_end", "on_validation_epoch_start", "on_validation_epoch_end")}

    def timing(name: str, part: str, start: bool):
        def hook(self, *args, **kwargs):
            synchronize(self.device)
            if start:
                marks[part] = time.perf_counter()
            else:
                times[part].append(time.perf_counter() - marks[part])
                if part == "train":
                    steps.append(self.epoch_steps)
            return hooks[name](self, *args, **kwargs)
        return hook

    try:
        MethodModule.on_train_epoch_start = timing("on_train_epoch_start", "train", True)
        MethodModule.on_train_epoch_end = timing("on_train_epoch_end", "train", False)
        MethodModule.on_validation_epoch_start = timing("on_validation_epoch_start", "validation", True)
        MethodModule.on_validation_epoch_end = timing("on_validation_epoch_end", "validation", False)
        cfg = compose(["experiment=paper", *data_overrides(data_root), f"method={method}",
                       "train.progress_bar=false", *overrides])
        metrics = train(cfg, run_dir)
    finally:
        for name, hook in hooks.items():
            setattr(MethodModule, name, hook)
    later = slice(1, None) if len(times["train"]) > 1 else slice(None)
    train_seconds = statistics.median(times["train"][later])
    validation_seconds = statistics.median(times["validation"][later]) if times["validation"] else 0.0
    steps_per_epoch = steps[-1]
    paper_steps = PAPER_TRAIN_SIZE // BATCH
    return {
        "steps_per_epoch": steps_per_epoch, "train_seconds_per_epoch": train_seconds,
        "validation_seconds": validation_seconds,
        "epoch_seconds": train_seconds * paper_steps / steps_per_epoch + validation_seconds,
        "images_per_s": steps_per_epoch * BATCH / train_seconds,
        "first_epoch_train_seconds": times["train"][0], "evaluate_seconds": metrics["time"]["evaluate_seconds"],
        "epochs_timed": times["train"],
    }


def aggregate(method: str, runs: int, data_root: Path | None, out_root: Path, overrides: list[str]
              ) -> dict[str, Any]:
    """K `mimmo train` processes of ``method`` at once (different seeds): images/s together, start-up included."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "mimmo.cli", "train", "experiment=paper", *data_overrides(data_root),
         f"method={method}", f"seed={seed}", f"output_dir={out_root}", "train.progress_bar=false",
         "evaluation.shifted=false", *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for seed in range(runs)]
    errors = [process.communicate()[1].decode()[-2000:] for process in processes]
    wall = time.perf_counter() - start
    failed = [e for p, e in zip(processes, errors, strict=True) if p.returncode]
    if failed:
        raise RuntimeError(f"{len(failed)} of {runs} concurrent runs failed; the first said:\n{failed[0]}")
    finished = sum((folder / "metrics.json").is_file() for folder in Path(out_root).iterdir())
    return {"runs": runs, "finished": finished, "wall_seconds": wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=PAPER_TRAIN_SIZE,
                        help="training images per epoch (the paper's 45 000; fewer for a quicker estimate)")
    parser.add_argument("--test-size", type=int, default=10_000, help="test images (CIFAR-100 has 10 000)")
    parser.add_argument("--eager", action="store_true", help="also time train.cuda_graphs=false")
    parser.add_argument("--aggregate", type=int, default=0, help="K concurrent runs of --aggregate-method (0: skip)")
    parser.add_argument("--aggregate-method", default="mimo")
    parser.add_argument("--aggregate-epochs", type=int, default=3)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. model.width=0.25")
    parser.add_argument("--embedded", action="store_true", help="the embedded dataset instead of CIFAR-100-shaped "
                        "pickles (a quick run of the logic on a CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    methods = {"all": ALL_METHODS, "none": []}.get(args.methods) or args.methods.split(",")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # data.train_size picks the training split out of what is left after the validation tenth
    work = Path(tempfile.mkdtemp(prefix="mimmo-epoch-time-"))
    data = None if args.embedded else work / "data"
    if data is not None:
        write_cifar100(data, num_train=args.train_size * 10 // 9 + 64, num_test=args.test_size)
    # one warm-start epoch for MIMMO/DUN: the epochs timed (after the first) are the steady state, theta learned
    common = [f"train.epochs={args.epochs}", f"data.train_size={args.train_size}", "train.warm_start_epochs=1",
              *args.extra]
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "epochs": args.epochs, "train_size": args.train_size,
                              "methods": {}}

    def save() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            temporary = args.out.with_suffix(".tmp")
            temporary.write_text(json.dumps(result, indent=1))
            os.replace(temporary, args.out)

    for method in methods:
        entry = timed_run(method, data, work / "runs" / method, common)
        if args.eager:
            eager = timed_run(method, data, work / "runs" / f"{method}-eager",
                              [*common, "train.cuda_graphs=false"])
            entry["eager_epoch_seconds"] = eager["epoch_seconds"]
            entry["eager_images_per_s"] = eager["images_per_s"]
            entry["speedup_over_eager"] = eager["epoch_seconds"] / entry["epoch_seconds"]
        result["methods"][method] = entry
        print(method, json.dumps({k: v for k, v in entry.items() if k != "epochs_timed"}), flush=True)
        save()
    if args.aggregate:
        overrides = [f"train.epochs={args.aggregate_epochs}", f"data.train_size={args.train_size}",
                     "train.warm_start_epochs=1", *args.extra]
        images_per_run = args.aggregate_epochs * (args.train_size // BATCH) * BATCH
        together = aggregate(args.aggregate_method, args.aggregate, data, work / "aggregate", overrides)
        single = aggregate(args.aggregate_method, 1, data, work / "single", overrides)
        rate, single_rate = (run["finished"] * images_per_run / run["wall_seconds"] for run in (together, single))
        result["aggregate"] = {"method": args.aggregate_method, "runs": args.aggregate, "images_per_s": rate,
                               "single_run_images_per_s": single_rate, "ratio": rate / single_rate,
                               "note": "wall clock of whole processes, start-up and evaluation included"}
        save()
    if result["methods"]:
        hours, proxies = paper_tables_estimate(result["methods"], args.test_size)
        result["paper_tables_hours_estimate"], result["estimate_proxies"] = hours, proxies
        if "aggregate" in result:
            result["paper_tables_hours_estimate_with_concurrent_runs"] = hours / result["aggregate"]["ratio"]
    save()
    print(json.dumps({k: v for k, v in result.items() if k != "methods"}, indent=1))
    return result


if __name__ == "__main__":
    main()
