"""Saved runs: find and load run folders, group them by their settings, aggregate over seeds.

A run folder holds ``metrics.json`` (format :data:`FORMAT_VERSION`) and ``config.yaml``. Reports read them
through :mod:`mimmo.runs.folder` (the same refusals as every command); they never retrain.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mimmo.runs.folder import (
    CONFIG_FILE,
    FORMAT_VERSION,
    METRICS_FILE,
    NON_SEMANTIC_KEYS,
    finished_metrics_of,
    read_config,
)
from mimmo.training.recipe import DEFAULTS as RECIPE_DEFAULTS

# Flattened config keys that may differ between the seeds of one group: the seed itself, the settings that do
# not change a result (run_folder.NON_SEMANTIC_KEYS), and the evaluation batch size. Keys under "hydra." are
# ignored too.
IGNORED_SETTINGS = frozenset({"seed", "run_dir", "train.eval_batch_size", *NON_SEMANTIC_KEYS})
# Settings outside method.* that may vary inside one table: each value becomes its own group (a row, a variant),
# so that ablation sweeps (Fig. 5: alpha; Fig. 6: layers and width) can be reported together.
ABLATION_SETTINGS = ("method.alpha", "model.layers", "model.planes", "model.width")
REQUIRED_KEYS = ("method", "dataset", "num_members", "test")


class ReportWarning(UserWarning):
    """Something about the given runs that the report shows but the reader should know (``mimmo report`` prints
    each as one line on stderr)."""


class SkippedRunsWarning(ReportWarning):
    """Some given paths are not valid runs (missing, incomplete, unreadable, another format)."""


class NonFiniteMetricsWarning(ReportWarning):
    """A run's metrics.json holds NaN or infinite values: the report shows them as ``nan`` / ``inf``."""


@dataclass(frozen=True)
class Run:
    """One saved run: its folder, its metrics.json and its config (nested dicts)."""

    path: Path
    metrics: dict
    config: dict

    @property
    def method(self) -> str:
        return str(self.metrics["method"])

    @property
    def dataset(self) -> str:
        return str(self.metrics["dataset"])

    @property
    def num_members(self) -> int:
        return int(self.metrics["num_members"])

    @property
    def num_exits(self) -> int:
        return int(self.metrics.get("num_exits") or 1)

    @property
    def seed(self) -> Any:
        return self.metrics.get("seed", self.config.get("seed"))

    @property
    def settings(self) -> dict[str, Any]:
        """The flattened config, like ``{"method.alpha": 1.0, ...}``; settings added after the run was saved
        (:data:`ADDED_SETTINGS`) with the value it was computed under."""
        return {**ADDED_SETTINGS, **flatten(self.config)}

    def get(self, *keys: str, default: Any = None) -> Any:
        """A nested value of metrics.json, or ``default`` where any key is missing or a value is null."""
        value: Any = self.metrics
        for key in keys:
            if not isinstance(value, dict) or value.get(key) is None:
                return default
            value = value[key]
        return value

    def setting(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": value}``; lists become tuples so that values compare and hash."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = _freeze(value)
    return flat


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


# Settings added to the config after runs had been saved without them, with the value under which those runs
# were computed (the behaviour before the setting existed; for the recipe, the values training itself reads for
# such a config, recipe.DEFAULTS): a saved config that lacks one of these keys is read as having this value, so
# that runs from before and after the addition share their tables. A historical record, not the current
# defaults: never change a value, only add settings.
ADDED_SETTINGS = {"data.label_noise": 0.0, "data.holdout_classes": None, "evaluation.ood": True,
                  "evaluation.ood_sets": (), **flatten({"train": RECIPE_DEFAULTS})}


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _looks_like_run(folder: Path) -> bool:
    """A folder a run wrote into: it has a config or checkpoints."""
    return (folder / CONFIG_FILE).is_file() or (folder / "checkpoints").is_dir()


def find_run_folders(path: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Run folders (with metrics.json) under ``path``, and the skipped ones with the reason."""
    if not path.exists():
        return [], [(path, "does not exist")]
    if path.is_file():
        if path.name == METRICS_FILE:
            return [path.parent], []
        return [], [(path, f"is a file, not a run folder or {METRICS_FILE}")]
    if (path / METRICS_FILE).is_file():
        return [path], []
    runs = sorted(p.parent for p in path.rglob(METRICS_FILE) if not _is_hidden(p.parent, path))
    skipped = []
    candidates = [path, *(p for p in path.rglob("*") if p.is_dir() and not _is_hidden(p, path))]
    for folder in sorted(candidates):
        if _looks_like_run(folder) and not (folder / METRICS_FILE).exists() \
                and not any(folder in run.parents for run in runs):
            skipped.append((folder, f"has no {METRICS_FILE} (incomplete or crashed run)"))
    if not runs and not skipped:
        skipped.append((path, f"holds no {METRICS_FILE}"))
    return runs, skipped


def read_run(folder: Path) -> Run:
    """Load one run folder; raise ValueError saying what is wrong with it."""
    metrics = finished_metrics_of(folder)  # the run folder's reader: the same refusals as every command
    version = metrics.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"format_version {version!r}, this version of mimmo reads {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_KEYS if metrics.get(key) is None]
    if missing:
        raise ValueError(f"{METRICS_FILE} lacks {missing}")
    if not isinstance(metrics["test"], dict):
        raise ValueError(f"{METRICS_FILE}: 'test' must be an object of metrics, got {metrics['test']!r}")
    config = metrics.get("config")
    if not isinstance(config, dict):  # an older metrics.json: the config from config.yaml, if the folder has one
        config = OmegaConf.to_container(read_config(folder)) if (folder / CONFIG_FILE).is_file() else {}
    return Run(folder, metrics, config)


def non_finite_metrics(metrics: Any, prefix: str = "") -> list[str]:
    """The dotted keys of metrics.json whose numbers are NaN or infinite (``test.nll``, ``shifted.sets...``);
    the run's config is not searched."""
    if isinstance(metrics, dict):
        return [key for name, value in metrics.items() if not (prefix == "" and name == "config")
                for key in non_finite_metrics(value, f"{prefix}{name}.")]
    if isinstance(metrics, list):
        return [key for index, value in enumerate(metrics) for key in non_finite_metrics(value, f"{prefix}{index}.")]
    if isinstance(metrics, float) and not math.isfinite(metrics):
        return [prefix.rstrip(".")]
    return []


def warn_non_finite(run: Run, shown: int = 3) -> None:
    """One :class:`NonFiniteMetricsWarning` line naming the run and its first non-finite metrics, if any."""
    keys = non_finite_metrics(run.metrics)
    if keys:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        warnings.warn(f"{run.path}: {METRICS_FILE} holds {len(keys)} non-finite value(s) ({', '.join(keys[:shown])}"
                      f"{more}); the report shows them as nan or inf, and a mean over seeds that includes one is nan",
                      NonFiniteMetricsWarning, stacklevel=3)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every valid run under ``paths`` (run folders or folders holding run folders, searched recursively).

    Missing paths, folders without metrics.json, unreadable files and other format versions are skipped and
    named in one :class:`SkippedRunsWarning`; ValueError if no valid run remains. A run whose metrics hold NaN
    or infinities is kept and named in a :class:`NonFiniteMetricsWarning` (one per run).
    """
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for path in paths:
        folders, bad = find_run_folders(Path(path))
        skipped.extend(bad)
        for folder in folders:
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            try:
                run = read_run(folder)
            except ValueError as error:
                skipped.append((folder, str(error)))
                continue
            runs.append(run)
            warn_non_finite(run)
    if skipped:
        lines = "\n".join(f"  {folder}: {reason}" for folder, reason in skipped)
        warnings.warn(f"skipped {len(skipped)} path(s) that are not valid runs:\n{lines}", SkippedRunsWarning,
                      stacklevel=2)
    if not runs:
        raise ValueError(f"no valid run found under {[str(p) for p in paths]}"
                         + (f"; skipped: {[str(f) for f, _ in skipped]}" if skipped else ""))
    return runs


@dataclass(frozen=True)
class RunGroup:
    """The seeds of one setting: same dataset, method, M and config apart from the seed."""

    dataset: str
    method: str
    num_members: int
    variant: tuple[tuple[str, Any], ...]  # the settings that single this group out among its method's, if any
    runs: tuple[Run, ...] = field(repr=False)
    # The settings (outside method.*) that differ between the runs of this dataset, with this group's values:
    # groups with the same context are compared in one table.
    context: tuple[tuple[str, Any], ...] = ()

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]

    def values(self, getter: Callable[[Run], Any]) -> list[float]:
        """One value per run that has it (None left out; NaN and infinities kept, so that a mean over seeds is
        NaN where a seed's value is: a report shows it rather than the other seeds' mean)."""
        return [float(value) for value in map(getter, self.runs) if value is not None]

    def mean_std(self, getter: Callable[[Run], Any]) -> tuple[float, float]:
        """Mean and population std over seeds; (nan, nan) when no run has the value, nan where one is nan."""
        return mean_std(self.values(getter))

    def metric(self, *keys: str) -> tuple[float, float]:
        """Mean and population std over seeds of a nested value of metrics.json."""
        return self.mean_std(lambda run: run.get(*keys))

    def setting(self, key: str, default: Any = None) -> Any:
        return self.runs[0].setting(key, default)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0); (nan, nan) for no values."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _comparable(settings: dict[str, Any], ignore: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in ignore and not k.startswith("hydra.")}


def differing_settings(runs: Sequence[Run], keys: Callable[[str], bool], ignore: frozenset[str]) -> list[str]:
    """The comparable settings selected by ``keys`` whose values are not the same in all ``runs``."""
    settings = [_comparable(run.settings, ignore) for run in runs]
    names = sorted({key for flat in settings for key in flat if keys(key)})
    return [key for key in names if len({repr(flat.get(key)) for flat in settings}) > 1]


def group_runs(runs: Iterable[Run], ignore: Iterable[str] = IGNORED_SETTINGS,
               ablation: Sequence[str] = ABLATION_SETTINGS) -> list[RunGroup]:
    """Group runs into seeds of one setting, and the groups into contexts that one table compares.

    Per dataset, the settings outside ``method.*`` that differ between runs (``train.epochs``,
    ``data.train_size``, ...; except ``ignore``, the seed and the ``ablation`` settings) form the context:
    runs in different contexts never share a table. Inside a context, runs are grouped by method and M and,
    where they vary, by the ``ablation`` settings and the method's own settings (``method.alpha``, ...): each
    value is its own group (a row: the ablation sweeps of Fig. 5 and 6 are reported together). ValueError
    where one seed appears twice in a group.
    """
    ignore = frozenset(ignore) | {"seed", "method.name", "method.num_members", "data.name"}
    runs = list(runs)
    groups = []
    for dataset in sorted({run.dataset for run in runs}):
        in_dataset = [run for run in runs if run.dataset == dataset]
        context_keys = differing_settings(
            in_dataset, lambda key: not key.startswith("method.") and key not in ablation, ignore)
        by_key: dict[tuple, list[Run]] = {}
        for run in in_dataset:
            context = tuple((key, run.setting(key)) for key in context_keys)
            by_key.setdefault((context, run.method, run.num_members), []).append(run)
        for (context, method, num_members), members in by_key.items():
            varying = [key for key in ablation if len({repr(run.setting(key)) for run in members}) > 1]
            varying += differing_settings(members, lambda key: key.startswith("method.") and key not in ablation,
                                          ignore)
            by_variant: dict[tuple, list[Run]] = {}
            for run in members:
                by_variant.setdefault(tuple((key, run.setting(key)) for key in varying), []).append(run)
            for variant, variant_runs in by_variant.items():
                seeds = [run.seed for run in variant_runs]
                duplicates = sorted({str(s) for s in seeds if seeds.count(s) > 1})
                if duplicates:
                    name = describe(dataset, method, num_members, variant + context)
                    folders = [str(run.path) for run in variant_runs if str(run.seed) in duplicates]
                    raise ValueError(f"group {name}: seed(s) {duplicates} appear more than once ({folders}); "
                                     "pass each run once")
                ordered = tuple(sorted(variant_runs, key=lambda run: _order(run.seed)))
                groups.append(RunGroup(dataset, method, num_members, variant, ordered, context))
    groups.sort(key=lambda g: (g.dataset, settings_order(g.context), str(g.method), g.num_members,
                               settings_order(g.variant)))
    return groups


def describe(dataset: str, method: str, num_members: int, settings: tuple[tuple[str, Any], ...]) -> str:
    return f"{method} on {dataset} with M={num_members}" + (
        f" ({', '.join(f'{k}={v}' for k, v in settings)})" if settings else "")


def _order(value: Any) -> tuple:
    """Numbers before everything else, numbers by value, the rest by text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


def settings_order(variant: tuple) -> tuple:
    """Sort key of ((key, value), ...): by key, then numbers by value before the rest by text."""
    return tuple((k, _order(v)) for k, v in variant)
