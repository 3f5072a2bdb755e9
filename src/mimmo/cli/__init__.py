"""The ``mimmo`` command line: one module per command (train, grid, evaluate, calibrate, cost, report, demo),
dispatched by :mod:`mimmo.cli.main`."""

from mimmo.cli.device import best_device
from mimmo.cli.main import main
from mimmo.config import CONFIG_DIR, compose

__all__ = ["CONFIG_DIR", "best_device", "compose", "main"]
