"""Run folders as training writes them (metrics.json and config.yaml), made up for report tests: no training."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mimmo.data.shifts import set_name, shifted_sets

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def config(method: str, num_members: int, seed: int, **overrides) -> dict:
    cfg = {"seed": seed, "output_dir": f"/runs/{method}/{seed}",
           "method": {"name": method, "num_members": num_members, "alpha": 1.0},
           "model": {"name": "resnet", "layers": [1, 2, 3, 1], "planes": [16, 32, 64, 128], "width": 1.0},
           "data": {"name": "embedded", "root": None},
           "train": {"epochs": 2, "batch_size": 64, "lr": 0.005}}
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def write_run(folder: Path, method: str, num_members: int, seed: int, test: dict, shifted_accuracy: float,
              flops: int, params: int, num_exits: int = 1, **overrides) -> Path:
    """A run folder as the training code writes it: metrics.json and config.yaml."""
    folder.mkdir(parents=True)
    cfg = config(method, num_members, seed, **overrides)
    sets = {}
    for i, (kind, level) in enumerate(shifted_sets()):
        scale = 1.0 - 0.03 * i
        sets[set_name(kind, level)] = {"accuracy": test["accuracy"] * scale, "nll": test["nll"] / scale,
                                       "ece": test["ece"] / scale, "brier": test["brier"] / scale,
                                       "entropy": 1.0}
    reliability = {"edges": [i / 15 for i in range(16)], "confidence": [(i + 0.5) / 15 for i in range(15)],
                   "accuracy": [min(1.0, (i + 0.5) / 15 * 0.8) for i in range(15)], "count": [10] * 15}
    metrics = {
        "format_version": 1, "method": method, "dataset": "embedded", "num_members": num_members,
        "num_exits": num_exits, "seed": seed, "config": cfg,
        "test": {**test, "entropy": 1.0, "reliability": reliability},
        "validation": dict(test),
        "shifted": {"summary": {"accuracy": {"mean": shifted_accuracy, "std": 0.1},
                                "nll": {"mean": 2 * test["nll"], "std": 1.0},
                                "ece": {"mean": 2 * test["ece"], "std": 0.1},
                                "brier": {"mean": 1.5 * test["brier"], "std": 0.001}},
                    "sets": sets},
        "cost": {"flops": flops, "params": params},
        "exit_weights": None, "exit_weights_history": None, "feature_reuse": None,
        "time": {"train_seconds": 1.0, "evaluate_seconds": 1.0},
    }
    if num_exits > 1:
        weights = [[0.1 + 0.05 * m, 0.2, 0.3, 0.4 - 0.05 * m] for m in range(num_members)]
        metrics["exit_weights"] = [list(row) for row in zip(*weights, strict=True)]  # (D, M)
        metrics["exit_weights_history"] = [[[0.25] * num_members] * 4, metrics["exit_weights"]]
    if num_members > 1:
        metrics["feature_reuse"] = {
            "input": {"profiles": [[1.0, 0.5, 0.2, 0.9]] * num_members, "overlap": 0.8},
            "output": {"profiles": [[(i % 7) / 6 for i in range(100)]] * num_members, "overlap": 0.6}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def results(accuracy: float, nll: float, ece: float, brier: float) -> dict:
    return {"accuracy": accuracy, "nll": nll, "ece": ece, "brier": brier}
