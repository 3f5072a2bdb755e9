"""The GPU check script's logic, on a CPU: its dry mode end to end, its deadline, its paper_tables estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import epoch_time  # noqa: E402


def run_check(out: Path, *arguments: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCHMARKS.parent / "src"), os.environ.get(
        "PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(out), *arguments], check=True,
                   env=env, timeout=600)
    return json.loads((out / "gpu-epoch-times.json").read_text())


def test_the_dry_mode_runs_every_part_and_records_it(tmp_path):
    """A graph check that passes (stand-in graphs replayed, losses equal to eager steps'), an injected capture failure
    that falls back, MIMO's epoch times graphed and eager, and the estimate: all in the JSON."""
    result = run_check(tmp_path, "--dry", "--aggregate-limit", "0")
    assert [result["parts"][name]["status"][:8] for name in ("graph_check", "epoch_times", "estimate")] == [
        "2 of 2 p", "measured", f"{result['paper_tables_hours_estimate']:.2f} h"[:8]]
    mimo, injected = result["graph_check"]["mimo"], result["graph_check"]["mixmo+injected-failure"]
    assert mimo["passed"] and mimo["cuda_graphs"]["used"] and mimo["cuda_graphs"]["captures"] == 1
    assert mimo["cuda_graphs"]["replays"] == 7  # 2 epochs of 5 steps, 3 warm-up steps
    assert injected["passed"] and "injected" in injected["cuda_graphs"]["fallback_reason"]
    assert result["methods"]["mimo"]["eager_epoch_seconds"] > 0
    assert result["estimate_proxies"]["mimmo"] == "mimo" and "mimo" not in result["estimate_proxies"]


def test_a_part_without_time_left_is_skipped_and_recorded(tmp_path):
    result = run_check(tmp_path, "--dry", "--deadline", "5")
    assert {part["status"] for part in result["parts"].values()} == {"skipped: no time left"}


def test_the_estimate_scales_the_measured_epochs_and_names_its_stand_ins():
    """Hand-computed: every method at 2 s per epoch and 10 s of evaluation on 2 000 test images (50 s on 10 000):
    66 runs x (100 x 2 s) + 66 x 50 s, plus the Ensemble's extra members (Base's epoch times M - 1, 3 seeds)."""
    measured = {"base": {"epoch_seconds": 2.0, "evaluate_seconds": 10.0},
                "mimo": {"epoch_seconds": 2.0, "evaluate_seconds": 10.0}}
    hours, proxies = epoch_time.paper_tables_estimate(measured, test_size=2000)
    ensemble_extra = 3 * 100 * 2.0 * ((2 - 1) + (4 - 1) + (8 - 1))
    assert hours * 3600 == pytest.approx(66 * (100 * 2.0 + 50.0) + ensemble_extra)
    assert proxies == {"ensemble": "base", "mc_dropout": "base", "dun": "mimo", "early_exit": "mimo",
                       "datamux": "mimo", "mixmo": "mimo", "mimmo_gamma": "mimo", "mimmo": "mimo"}
