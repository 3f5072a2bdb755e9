"""The config directory and config composition, without torch (``cli``, ``grid``, ``demo`` and tests share it).

``compose(overrides)`` gives the resolved config that ``mimmo train <overrides>`` would run, through Hydra's
compose API (no run directory, nothing written).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mimmo.run_folder import register_resolvers

CONFIG_DIR = str(Path(__file__).parent / "configs")


register_resolvers()  # run folder names and the non-semantic settings (mimmo.run_folder)


def compose(overrides: list[str]) -> DictConfig:
    """The config for ``overrides`` without running anything (no Hydra run directory)."""
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra.compose(config_name="config", overrides=list(overrides))
