"""What mimmo prints: quiet library logs, mimmo's own progress lines and the summary of a finished run.

By default the terminal shows Lightning's progress bar, one line per phase of mimmo's work and a summary at
the end; Lightning's banners and tips ("GPU available: ...", "Tip: install litlogger") and the libraries'
deprecation warnings are hidden. ``--verbose`` (the environment variable ``MIMMO_VERBOSE=1``, so that it
reaches every process of a sweep) shows them all.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

VERBOSE_ENV = "MIMMO_VERBOSE"
# Lightning's own loggers: the top one adds a console handler of its own at import ("INFO: ..."), and the two
# below set their level to INFO; next to Hydra's (or mimmo's) handler on the root logger every line came twice.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def set_verbose(verbose: bool) -> None:
    """Remember ``--verbose`` for this process and the processes it starts (sweep jobs, DDP ranks)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def pop_verbose(argv: list[str]) -> list[str]:
    """``argv`` without ``--verbose``, which is recorded by :func:`set_verbose` (a global flag: it may stand
    anywhere on mimmo's command line, also among a command's Hydra overrides)."""
    if "--verbose" in argv:
        set_verbose(True)
    return [arg for arg in argv if arg != "--verbose"]


class ConsoleFormatter(logging.Formatter):
    """mimmo's own progress lines bare; anything else (a library's, a warning) with its level and origin."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.name.split(".")[0] == "mimmo" and record.levelno == logging.INFO:
            return message
        return f"{record.levelname} [{record.name}] {message}"


def configure_console(verbose: bool | None = None) -> None:
    """Make the terminal quiet (or, ``verbose``, show everything) for training and evaluation in this process.

    Lightning's handlers are removed so that its records reach the terminal once, through the root logger's
    handler (Hydra's, as configured by ``hydra/job_logging``, or one added here when there is none); its info
    lines and the libraries' deprecation warnings are shown only when verbose.
    """
    verbose = is_verbose() if verbose is None else verbose
    import lightning  # noqa: F401  (importing it installs the handlers and levels replaced here)

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(ConsoleFormatter())
        root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.getLogger("mimmo").setLevel(logging.INFO)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's console handler (never a file handler)
                logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        from lightning.fabric.utilities.warnings import PossibleUserWarning

        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, PossibleUserWarning):
            warnings.filterwarnings("ignore", category=category)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = round(float(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def run_summary(run_dir: str | Path, metrics: dict[str, Any], reused: bool = False) -> str:
    """The lines printed when a run ends: its folder, the test metrics and the time it took."""
    test = metrics["test"]
    times = metrics.get("time") or {}
    lines = [f"run folder: {run_dir}" + (" (finished before: reused)" if reused else ""),
             f"test set: accuracy {test['accuracy']:.4f}, NLL {test['nll']:.4f}, ECE {test['ece']:.4f}, "
             f"Brier {test['brier']:.5f}"]
    shifted = metrics.get("shifted")
    if shifted:
        summary = shifted["summary"]
        lines.append(f"shifted sets (mean of 25): accuracy {summary['accuracy']['mean']:.4f}, "
                     f"NLL {summary['nll']['mean']:.4f}")
    if times:
        train_seconds, evaluate_seconds = times.get("train_seconds"), times.get("evaluate_seconds")
        parts = [f"{name} {format_duration(value)}" for name, value in
                 (("training", train_seconds), ("evaluation", evaluate_seconds)) if value is not None]
        lines.append("time: " + ", ".join(parts))
    if metrics.get("cuda_graphs"):
        lines.append(f"CUDA graphs: {graphs_summary(metrics['cuda_graphs'])}")
    return "\n".join(lines)


def graphs_summary(graphs: dict[str, Any]) -> str:
    """``used (1 capture, 40 replays)``, ``fell back to eager steps (why)`` or ``off (why)``: metrics.json's
    ``cuda_graphs`` in words."""
    if graphs.get("fallback_reason"):
        return f"fell back to eager steps ({graphs['fallback_reason']})"
    if graphs.get("used"):
        captures = graphs["captures"]
        return f"used ({captures} capture{'s' * (captures != 1)}, {graphs['replays']} replays)"
    return "off" + (f" ({graphs['off_reason']})" if graphs.get("off_reason") else "")
