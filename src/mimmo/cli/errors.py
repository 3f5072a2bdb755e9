"""How a command reports what it refuses: one line, exit status 2, a traceback only with ``--debug``."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from mimmo import RunStopped
from mimmo.runs.folder import DiskFull, RunFolderBusy

# Errors that mean "this input is not allowed" (exit status 2), not a bug in mimmo.
REFUSALS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, RunFolderBusy,
            HydraException, OmegaConfBaseException)
# Errors that are not the input's fault but that the message fully explains (exit status 1): a non-finite loss,
# no network for data.download=true, a full disk, a CUDA graph that failed under train.cuda_graphs=true, a library
# outside the tested range (RunStopped).
ENVIRONMENT = (FloatingPointError, ConnectionError, DiskFull, RunStopped)
T = TypeVar("T")


def debugging() -> bool:
    """``--debug`` on the command line (see :func:`main`) or MIMMO_DEBUG=1: tracebacks for refusals too."""
    return os.environ.get("MIMMO_DEBUG", "") not in ("", "0")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_reporting_errors(command: str, action: Callable[[], T]) -> T:
    """Run ``action``; a refusal becomes one line on stderr and exit status 2, a signal stop 128 + its number,
    a non-finite loss, no network or a full disk status 1 (each with the traceback under ``--debug``)."""
    from mimmo.runs.signals import Interrupted

    try:
        return action()
    except (Interrupted, *REFUSALS, *ENVIRONMENT) as error:
        if isinstance(error, Interrupted):
            code, message = error.exit_code, str(error)
        else:
            code, message = (1 if isinstance(error, ENVIRONMENT) else 2), one_line(error)
        if debugging():
            traceback.print_exception(error)
        print(f"mimmo {command}: {message}", file=sys.stderr)
        raise SystemExit(code) from None
