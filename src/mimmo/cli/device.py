"""The ``--device`` option of the commands that evaluate a trained run (evaluate, calibrate)."""

from __future__ import annotations


def best_device(name: str = "auto") -> str:
    """``auto``: the first CUDA device where there is one, else the CPU; any other name is checked (a device torch
    knows, a CUDA device this machine has) and kept as given. ValueError naming it otherwise."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"--device {name!r} is not a device name: cpu, cuda, cuda:1, ... or auto") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: this torch {torch.__version__} sees no CUDA device (a CPU-only build, "
                             "or no GPU here); use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return name
