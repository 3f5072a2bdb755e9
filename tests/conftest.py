"""Shared test setup: one torch thread for the whole session.

Tiny models run fastest on one thread, and the suite must not stall when other jobs share the cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_runs import results, write_run


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
