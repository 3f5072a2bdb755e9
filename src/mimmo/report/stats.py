"""Statistics over seeds: 95% intervals of a mean, paired differences between methods, seeds won, and the
provenance of the runs a report is made from (docs/results.md says how to read them).

* **Interval of a mean** over n seeds: Student's t interval, mean ± t(0.975, n − 1) · s / √n with s the sample
  standard deviation (ddof 1). It says how well n seeds pin down the mean of the seed distribution; with n = 2
  it is wide (t = 12.71), as it should be.
* **Paired difference** of a method against a reference method: d_s = metric(method, s) − metric(reference, s)
  over the seeds s that both have (same seed = same data split, initial draw and label noise), its mean and the
  t interval of that mean. Pairing removes the seed-to-seed variation the two runs share.
* **Seeds won**: on how many of the n paired seeds the reference is strictly better (higher accuracy, lower NLL,
  ECE, Brier); ties (equal to the last float bit) are counted apart.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mimmo.report.runs import Run, RunGroup

# Student's t at 0.975 for 1..30 degrees of freedom (two-sided 95%).
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table to 30, then the Cornish-Fisher
    expansion, accurate to 1e-4 there)."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """A mean over n values with its 95% t interval (``half`` is nan below two values)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def excludes_zero(self) -> bool:
        return not math.isnan(self.half) and (self.low > 0 or self.high < 0)


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t interval of ``values`` (seeds as independent draws)."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, n)
    sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t_quantile_975(n - 1) * sample_std / math.sqrt(n), n)


@dataclass(frozen=True)
class Paired:
    """A method against the reference on one metric: the mean paired difference (method − reference) with its
    interval, and on how many of the paired seeds the reference is better, equal, worse."""

    difference: Interval
    reference_better: int
    ties: int

    @property
    def n(self) -> int:
        return self.difference.n


def by_seed(group: RunGroup, getter: Callable[[Run], Any]) -> dict[Any, float]:
    """The values of a group, keyed by seed (None left out; NaN and infinities kept, so that a paired difference
    with one is nan, shown as such, as in every other table)."""
    return {run.seed: float(value) for run in group.runs if (value := getter(run)) is not None}


def paired(method: dict[Any, float], reference: dict[Any, float], higher_is_better: bool) -> Paired:
    """Paired difference over the seeds both have."""
    seeds = sorted(set(method) & set(reference), key=str)
    differences = [method[s] - reference[s] for s in seeds]
    better = sum((d < 0) if higher_is_better else (d > 0) for d in differences)
    ties = sum(d == 0 for d in differences)
    return Paired(interval(differences), better, ties)


# ----------------------------------------------------------------------------------------- per-seed CSV

def per_seed_csv(groups: Sequence[RunGroup], label: Callable[[RunGroup], str],
                 columns: Sequence[tuple[str, str, Callable[[Run], Any]]]) -> str:
    """One row per run: its group, seed, folder and every (block, metric) of ``columns`` at full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", "method", "label", "num_members", "settings", "seed", "run",
                     *(f"{block}_{key}" for block, key, _ in columns)])
    for group in groups:
        settings = ", ".join(f"{k}={v}" for k, v in group.context + group.variant)
        for run in group.runs:
            values = []
            for _, _, getter in columns:
                value = getter(run)
                values.append("" if value is None else repr(float(value)))
            writer.writerow([group.dataset, group.method, label(group), group.num_members, settings, run.seed,
                             run.path.name, *values])
    return out.getvalue()


# ------------------------------------------------------------------------------------------- provenance

PROVENANCE_KEYS = ("commit", "dirty", "torch", "threads", "device", "device_name", "machine")


def _provenance_text(key: tuple) -> str:
    record = dict(zip(PROVENANCE_KEYS, key, strict=True))
    commit = "unknown commit" if record["commit"] is None else f"commit {str(record['commit'])[:10]}"
    if record["dirty"]:
        commit += " (with uncommitted changes)"
    threads = record["threads"]
    device = record["device"] if not record["device_name"] else f"{record['device']} ({record['device_name']})"
    return (f"{commit}, torch {record['torch']}, {threads} thread{'s' if threads != 1 else ''}, {device}, "
            f"{record['machine']}")


def provenance_markdown(runs: Sequence[Run]) -> str:
    """Where the runs come from (each run's metrics.json ``provenance``): one line when they agree; otherwise
    one line per combination, naming its runs."""
    combos: dict[tuple | None, list[Run]] = {}
    for run in runs:
        record = run.metrics.get("provenance")
        key = None if not isinstance(record, dict) else tuple(record.get(k) for k in PROVENANCE_KEYS)
        combos.setdefault(key, []).append(run)
    lines = ["## Provenance", ""]
    if list(combos) == [None]:
        lines.append(f"No run records its provenance (all {len(runs)} were saved before it was recorded).")
        return "\n".join(lines) + "\n"
    if len(combos) == 1:
        (key,) = combos
        lines.append(f"All {len(runs)} runs: {_provenance_text(key)}.")
        return "\n".join(lines) + "\n"
    lines.append(f"The {len(runs)} runs differ in where they were computed:")
    lines.append("")
    for index, (key, members) in enumerate(sorted(combos.items(), key=lambda kv: -len(kv[1]))):
        what = "no provenance recorded (saved before it was)" if key is None else _provenance_text(key)
        names = "the others" if index == 0 else ", ".join(f"`{run.path.name}`" for run in members)
        lines.append(f"- {len(members)} run{'s' if len(members) != 1 else ''}: {what}: {names}")
    return "\n".join(lines) + "\n"
