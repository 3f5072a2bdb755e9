"""Report section on convergence: has each run's training settled, and does the held-out NLL rise?

Per run, from its log (log/metrics.csv) and its exit-weight history:
- θ change: the largest range of any exit weight (any exit, any member) over the last 20% of the epochs,
  counted from the epoch before that window (learned weights only);
- loss change: the training objective's mean over the last 10% of the epochs against its mean over the 10%
  before, as a relative change (negative: still falling);
- loss fall share: how much the loss fell in those last 10% of the epochs, as a share of its whole fall from the
  first epoch (scale-free: a loss near 0 can halve in relative terms while its curve is flat);
- held-out NLL: the validation NLL's minimum over the logged epochs (and where), its last value and the rise
  from the minimum to the last (the paper's over-fitting: a network that memorises its training set gets more
  confidently wrong on held-out data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mimmo.report.figures import training_curves
from mimmo.report.runs import Run, RunGroup
from mimmo.report.style import learns_exit_weights
from mimmo.report.tables import build_tables, row_label

CONVERGENCE_FILE = "convergence.md"
THETA_WINDOW = 0.2  # fraction of the epochs over which θ must have settled
LOSS_WINDOW = 0.1  # the loss's last window against the one before


def theta_change(run: Run, window: float = THETA_WINDOW) -> float | None:
    """Largest range of an exit weight over the last ``window`` of the epochs (None: no learned weights)."""
    history = run.get("exit_weights_history")
    if not history or not learns_exit_weights(run.get("method")):
        return None
    history = np.asarray(history, dtype=float)  # (epochs, D, M)
    width = max(1, math.ceil(window * len(history)))
    last = history[-(width + 1):]
    return float((last.max(axis=0) - last.min(axis=0)).max())


def _loss_windows(run: Run, window: float) -> tuple[float, float, float] | None:
    """The training loss's first epoch, its mean over the ``window`` of the epochs before the last one, and its
    mean over the last ``window`` (at least one epoch each); None without a long enough log."""
    curve = training_curves(run).get("train/loss")
    if curve is None:
        return None
    losses = np.asarray(curve[1], dtype=float)
    width = max(1, math.ceil(window * len(losses)))
    if len(losses) < 2 * width:
        return None
    return float(losses[0]), float(losses[-2 * width:-width].mean()), float(losses[-width:].mean())


def loss_change(run: Run, window: float = LOSS_WINDOW) -> float | None:
    """Relative change of the mean training loss, last ``window`` of the epochs against the one before."""
    windows = _loss_windows(run, window)
    if windows is None or not windows[1]:
        return None
    _, before, last = windows
    return (last - before) / abs(before)


def loss_fall_share(run: Run, window: float = LOSS_WINDOW) -> float | None:
    """The training loss's fall over the last ``window`` of the epochs (mean of that window against the mean of
    the one before) as a share of its whole fall, from the first epoch to that last window's mean: near 0, the
    curve has flattened; negative, it rose at the end."""
    windows = _loss_windows(run, window)
    if windows is None or windows[0] <= windows[2]:
        return None
    first, before, last = windows
    return (before - last) / (first - last)


def held_out_nll(run: Run) -> dict[str, float] | None:
    """The validation NLL's minimum, the epoch of the minimum (1-based), the last value and the rise."""
    curve = training_curves(run).get("val/nll")
    if curve is None or not curve[1]:
        return None
    epochs, values = curve
    best = int(np.argmin(values))
    return {"min": values[best], "min_epoch": epochs[best], "last": values[-1],
            "rise": values[-1] / values[best] - 1.0}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def convergence_markdown(groups: Sequence[RunGroup]) -> str:
    """One table per (dataset, settings, M) with the convergence numbers of every method ('' when no run has
    a training log)."""
    texts = []
    for table in build_tables(groups):
        rows = []
        for group in table.groups:
            thetas = [v for v in (theta_change(run) for run in group.runs) if v is not None]
            losses = [v for v in (loss_change(run) for run in group.runs) if v is not None]
            shares = [v for v in (loss_fall_share(run) for run in group.runs) if v is not None]
            nlls = [v for v in (held_out_nll(run) for run in group.runs) if v is not None]
            if not (thetas or losses or nlls):
                continue
            cells = [str(len(group.runs)),
                     f"{max(thetas):.4f}" if thetas else "–",
                     f"{_mean(losses):+.1%}" if losses else "–",
                     f"{max(shares):.1%}" if shares else "–",
                     f"{_mean([n['min'] for n in nlls]):.3f}" if nlls else "–",
                     ", ".join(str(n["min_epoch"]) for n in nlls) if nlls else "–",
                     f"{_mean([n['last'] for n in nlls]):.3f}" if nlls else "–",
                     f"{_mean([n['rise'] for n in nlls]):+.0%} ({min(n['rise'] for n in nlls):+.0%} to "
                     f"{max(n['rise'] for n in nlls):+.0%})" if nlls else "–"]
            rows.append("| " + " | ".join([row_label(group, table), *cells]) + " |")
        if not rows:
            continue
        texts.append("\n".join([
            f"### Convergence: {table.title}", "",
            "| Method | seeds | θ change, last 20% (max over seeds) | training loss, last 10% vs the 10% before "
            "| its fall there, share of the whole fall (max over seeds) | val. NLL min | epoch of min (per seed) "
            "| val. NLL last | rise, last over min (min to max over seeds) |",
            "|:--" + "|--:" * 8 + "|", *rows, "",
            "θ change: the largest range of any learned exit weight over the last 20% of the epochs (MIMMO, DUN). "
            "Training loss: the method's objective, mean per epoch; a change near 0 means it has flattened, and so "
            "does a small share of its whole fall (from the first epoch) made in the last 10% of the epochs (the "
            "relative change of a loss near 0 can be large while its curve is flat). "
            "Validation NLL at the logged epochs (train.val_every_n_epochs); means over seeds."]) + "\n")
    return ("## Convergence\n\n" + "\n".join(texts)) if texts else ""
