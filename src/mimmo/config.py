"""The config directory and config composition, without torch (``cli``, ``grid``, ``demo`` and tests share it).

``compose(overrides)`` gives the resolved config that ``mimmo train <overrides>`` would run, through Hydra's
compose API (no run directory, nothing written).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).parent / "configs")


def run_name(override_dirname: str) -> str:
    """Run folder name: the command-line overrides (sorted by Hydra), or 'default' when there are none."""
    return override_dirname.replace("/", "_") or "default"


if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", run_name)


def compose(overrides: list[str]) -> DictConfig:
    """The config for ``overrides`` without running anything (no Hydra run directory)."""
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra.compose(config_name="config", overrides=list(overrides))
