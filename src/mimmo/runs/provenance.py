"""Where a run's numbers come from: code version, library versions, threads and device (``metrics.json``'s
``provenance`` section, shown in every report's header; docs/run-folder.md)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).resolve().parents[1]


def source_commit(path: Path = SOURCE) -> dict[str, Any]:
    """The git commit of the mimmo source that runs, and whether its tracked files differ from it; both None
    when the source is not a git checkout (an installed wheel) or git is missing."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def provenance(device: torch.device | str) -> dict[str, Any]:
    """The code, library versions, torch threads and device a run was computed with."""
    from mimmo import __version__

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or None
    return {"mimmo": __version__, **source_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "device": str(device),
            "device_name": name, "machine": platform.machine()}
