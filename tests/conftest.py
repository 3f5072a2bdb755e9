"""Shared test setup: one torch thread for the whole session.

Tiny models run fastest on one thread, and the suite must not stall when other jobs share the cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_runs import results, write_run
from tiny_runs import RecordingGraphs, tiny

from mimmo import training
from mimmo.training import train


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts several processes (DDP); deselect with -m 'not slow'")


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """Made-up finished runs of base (two seeds), MIMO and MIMMO (two seeds) under one folder."""
    root = tmp_path / "runs"
    base_cost = (109_852_872, 1_756_340)
    write_run(root / "base" / "0", "base", 1, 0, results(0.50, 3.96, 0.36, 0.0078), 0.24, *base_cost)
    write_run(root / "base" / "1", "base", 1, 1, results(0.54, 3.92, 0.36, 0.0082), 0.26, *base_cost)
    write_run(root / "mimo" / "0", "mimo", 2, 0, results(0.47, 3.53, 0.22, 0.00752), 0.21, 110_350_000,
              1_810_000)
    write_run(root / "mimmo" / "0", "mimmo", 2, 0, results(0.60, 1.49, 0.14, 0.00520), 0.31, 172_820_000,
              2_040_000, num_exits=4)
    write_run(root / "mimmo" / "1", "mimmo", 2, 1, results(0.62, 1.51, 0.14, 0.00524), 0.33, 172_820_000,
              2_040_000, num_exits=4)
    return root


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny run (tests/tiny_runs.py), trained once for the whole test session: its folder and metrics.
    Tests read it; one that changes a run works on a copy."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    return run_dir, train(tiny(), run_dir)


@pytest.fixture
def recording(monkeypatch) -> list[RecordingGraphs]:
    """Make the trainer take its graphed path on this CPU, with :class:`RecordingGraphs`."""
    made: list[RecordingGraphs] = []

    def backend(device):
        made.append(RecordingGraphs())
        return made[-1]

    monkeypatch.setattr(training.module, "cuda_graphs_available", lambda device, world_size: True)
    monkeypatch.setattr(training.module, "make_graph_backend", backend)
    return made
