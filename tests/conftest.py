"""Shared test setup: one torch thread for the whole session.

Tiny models run fastest on one thread, and the suite must not stall when other jobs share the cores.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts several processes (DDP); deselect with -m 'not slow'")
