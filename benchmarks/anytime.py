"""Anytime inference of a trained exit method: the wall-clock saving at the cheapest threshold whose accuracy is
within 0.5 points of the full mixture. Prints JSON; not a test.

    python benchmarks/anytime.py --run runs/paper_backbone/<run> --repeats 3 --out benchmarks/results/anytime.json

The run's clean test set is predicted ``--repeats`` times at every threshold and with the full mixture (rounds
interleaved: every threshold once per round). Accuracy, NLL and the FLOPs do not change between rounds; the
seconds per image are the median over the rounds. The saving is 1 - (time at the chosen threshold) / (time of
the full mixture), both measured here, in one process, on the same batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mimmo.evaluation.anytime import DEFAULT_THRESHOLDS, anytime_sweep, cheapest_within
from mimmo.training import load_run, load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run folder of mimmo, mimmo_gamma, dun or early_exit")
    parser.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS))
    parser.add_argument("--points", type=float, default=0.5, help="accuracy tolerance in percentage points")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's train.eval_batch_size")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    method, normalizer, cfg = load_run(args.run, args.device)
    splits = load_splits(cfg)
    batch_size = args.batch_size or int(cfg.train.eval_batch_size)
    rounds, loads = [], []
    for _ in range(args.repeats):
        rounds.append(anytime_sweep(method, splits.test, normalizer, thresholds, batch_size, args.device))
        loads.append(os.getloadavg()[0])
    table = rounds[0]
    for index, row in enumerate(table["thresholds"]):
        times = [r["thresholds"][index]["seconds_per_image"] for r in rounds]
        row["seconds_per_image"] = statistics.median(times)
        row["seconds_per_image_rounds"] = times
    full_times = [r["full"]["seconds_per_image"] for r in rounds]
    table["full"]["seconds_per_image"] = statistics.median(full_times)
    table["full"]["seconds_per_image_rounds"] = full_times
    chosen = cheapest_within(table["thresholds"], table["full"]["accuracy"], args.points)
    result = {
        "run": str(Path(args.run)), "method": cfg.method.name, "num_members": method.num_members,
        "num_exits": method.num_exits, "model": OmegaConf.to_container(cfg.model), "dataset": cfg.data.name,
        "input_shape": list(splits.input_shape), "num_classes": splits.num_classes, "points": args.points,
        "chosen": chosen,
        "flops_saving": None if chosen is None else 1.0 - chosen["flops"] / table["full"]["flops"],
        "wall_clock_saving": None if chosen is None else
        1.0 - chosen["seconds_per_image"] / table["full"]["seconds_per_image"],
        "accuracy_drop_points": None if chosen is None else 100.0 * (table["full"]["accuracy"] - chosen["accuracy"]),
        "anytime": table, "repeats": args.repeats, "load_average_per_round": loads,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": args.device},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
