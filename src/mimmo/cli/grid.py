"""``mimmo grid``: a named grid of runs, as one or more Hydra sweeps run one after the other.

Hydra's basic sweeper takes the Cartesian product of its overrides, so "M only for the methods that have
it" needs two sweeps. A grid file ``configs/grid/<name>.yaml`` lists them::

    description: one line
    sweeps:
      - [experiment=paper, data=cifar100, "method=mimo,mimmo", "method.num_members=2,4,8", "seed=0,1,2"]
      - [experiment=paper, data=cifar100, "method=base,dun", "seed=0,1,2"]

``mimmo grid NAME [overrides...]`` runs every sweep as ``mimmo train --multirun <sweep> <overrides>`` in this
process, through the same Hydra entry point as ``mimmo train``, so Hydra's launchers apply unchanged
(``hydra/launcher=joblib``, ``hydra/launcher=submitit_slurm``). An override whose key a sweep already sets
replaces it there (``mimmo grid paper_tables seed=0`` runs seed 0 only). Run folders are named from the
overrides, so a grid started again skips its finished runs and resumes its cut-off ones; before anything runs,
every run of the grid is composed, its folder checked (two runs that would share a folder are refused) and its
data checked (there, or to be downloaded).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from mimmo.config import CONFIG_DIR, check_known_keys
from mimmo.runs.folder import LAST_CHECKPOINT, METRICS_FILE

GRID_DIR = Path(CONFIG_DIR) / "grid"
USAGE = """usage: mimmo grid NAME [--dry-run] [overrides...]
       mimmo grid --list

Run a named grid of trainings (configs/grid/NAME.yaml, or a path to such a file): each of its sweeps as
`mimmo train --multirun <sweep> <overrides>`, one after the other. Finished runs are skipped, cut-off runs
resume from their last checkpoint.

  --list      the grids and their number of runs
  --dry-run   print the sweeps and their runs (finished / to resume / new) without training; every run's
              config is composed and validated (its method is built once per distinct shape) and its data
              checked (there, or to be downloaded)
  overrides   Hydra overrides added to every sweep; one whose key a sweep sets replaces it there, e.g.
              seed=0, output_dir=/scratch/runs, hydra/launcher=joblib hydra.launcher.n_jobs=2 train.threads=1;
              a method option (method.kl_convention=authors) goes only to the sweeps of the methods that have it
"""


@dataclass(frozen=True)
class Grid:
    """A named list of sweeps; each sweep is a list of Hydra override strings."""

    name: str
    description: str
    sweeps: tuple[tuple[str, ...], ...]
    path: Path


@dataclass(frozen=True)
class PlannedRun:
    """One run of a grid: its overrides (as the sweeper passes them), its composed config and folder."""

    sweep: int  # index in the grid's sweeps, from 0
    overrides: tuple[str, ...]
    config: DictConfig
    folder: Path

    @property
    def status(self) -> str:
        """``finished`` (metrics.json), ``partial`` (a checkpoint to resume from) or ``new``."""
        if (self.folder / METRICS_FILE).exists():
            return "finished"
        if (self.folder / LAST_CHECKPOINT).exists():
            return "partial"
        return "new"


def available_grids() -> dict[str, Path]:
    """The grids shipped in ``configs/grid/``, by name."""
    return {path.stem: path for path in sorted(GRID_DIR.glob("*.yaml"))}


def load_grid(name: str) -> Grid:
    """The grid ``name`` (a shipped grid's name or a path to a grid file); ValueError naming what is wrong."""
    grids = available_grids()
    if name in grids:
        path = grids[name]
    elif name.endswith((".yaml", ".yml")) and Path(name).is_file():
        path = Path(name)
    else:
        raise ValueError(f"unknown grid {name!r}; choose one of {sorted(grids)} or give the path of a grid file")
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"grid file {path} is not readable YAML ({' '.join(str(error).split())}); quote an "
                         "override that holds brackets or commas, e.g. \"model.layers=[1,1,1,1]\"") from error
    if not isinstance(content, dict) or not isinstance(content.get("sweeps"), list) or not content["sweeps"]:
        raise ValueError(f"grid file {path} must hold a mapping with a non-empty list 'sweeps'")
    sweeps = []
    for index, sweep in enumerate(content["sweeps"]):
        if not isinstance(sweep, list) or not all(isinstance(o, str) and o for o in sweep):
            raise ValueError(f"grid file {path}: sweep {index} must be a list of override strings, got {sweep!r}")
        sweeps.append(tuple(sweep))
    return Grid(path.stem, str(content.get("description", "")), tuple(sweeps), path)


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def override_key(override: str) -> str:
    """The key or config group an override sets (``+a.b=1`` -> ``a.b``, ``hydra/launcher=joblib`` -> itself)."""
    return _parse([override])[0].key_or_group


def sweep_methods(sweep: Sequence[str]) -> list[str]:
    """The methods a sweep trains (its ``method=`` override, a list for a sweep over methods)."""
    for parsed in _parse(sweep):
        if parsed.key_or_group == "method":
            return [str(v) for v in parsed.sweep_string_iterator()] if parsed.is_sweep_override() \
                else [str(parsed.value())]
    return [str(yaml.safe_load((Path(CONFIG_DIR) / "config.yaml").read_text())["defaults"][0]["method"])]


def method_has_option(method: str, option: str) -> bool:
    """Whether ``configs/method/<method>.yaml`` has the key ``option`` (an unknown method: no)."""
    path = Path(CONFIG_DIR) / "method" / f"{method}.yaml"
    return path.is_file() and option in (yaml.safe_load(path.read_text()) or {})


def with_overrides(sweep: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``sweep`` with ``extra`` applied: an extra override replaces the sweep's one of the same key, others
    are appended. A method option (``method.kl_convention=authors``) goes only to the sweeps whose methods all
    have it: ``mimmo grid paper_tables method.kl_convention=authors`` retrains MIMMO under the authors'
    convention and leaves the other methods' runs as they are. A sweep in which some methods have the option and
    others do not is refused (the grid must give them separate sweeps)."""
    result = list(sweep)
    keys = [override_key(o) for o in result]
    for override in extra:
        key = override_key(override)
        if key in keys:
            result[keys.index(key)] = override
            continue
        if key.startswith("method.") and not override.startswith("+"):
            methods = sweep_methods(result)
            having = [m for m in methods if method_has_option(m, key.split(".", 1)[1])]
            if not having:
                continue
            if len(having) < len(methods):
                others = [m for m in methods if m not in having]
                raise ValueError(f"override {override!r} applies to method(s) {having} but not to {others} of the "
                                 f"sweep {list(sweep)}: give those methods separate sweeps")
        result.append(override)
        keys.append(key)
    return result


def check_method_options(grid: Grid, extra: Sequence[str]) -> None:
    """Refuse a method option that no method of the grid has (a typo would otherwise change nothing)."""
    methods = sorted({m for sweep in grid.sweeps for m in sweep_methods(with_overrides(sweep, [
        o for o in extra if override_key(o) == "method"]))})
    for override in extra:
        key = override_key(override)
        if key.startswith("method.") and not override.startswith("+") \
                and not any(method_has_option(m, key.split(".", 1)[1]) for m in methods):
            raise ValueError(f"override {override!r}: no method of grid {grid.name!r} ({methods}) has the option "
                             f"{key.split('.', 1)[1]!r}")


def expand(sweep: Sequence[str]) -> list[tuple[str, ...]]:
    """The runs of one sweep, each as the override strings Hydra's basic sweeper gives its job (in its order)."""
    from mimmo.training.compat import split_sweep

    parsed = [o for o in _parse(sweep) if not o.is_hydra_override()]
    batches = split_sweep(parsed)
    return [tuple(job) for batch in batches for job in batch]


@contextmanager
def _hydra_config(cfg: DictConfig) -> Iterator[None]:
    """Make ``cfg`` Hydra's current config (for the ``${hydra:...}`` resolver), then restore the previous one."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(cfg)
    try:
        yield
    finally:
        instance.cfg = previous


def compose_run(overrides: Sequence[str], in_sweep: bool = True) -> tuple[DictConfig, Path]:
    """One run's resolved config and the folder Hydra gives it: ``hydra.sweep.dir``/``hydra.sweep.subdir`` in a
    sweep, ``hydra.run.dir`` for a single run (call inside ``hydra.initialize_config_dir``)."""
    import hydra
    from omegaconf import OmegaConf, open_dict

    cfg = hydra.compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    with _hydra_config(cfg):
        sweep = cfg.hydra.sweep
        folder = Path(str(sweep.dir)) / str(sweep.subdir) if in_sweep else Path(str(cfg.hydra.run.dir))
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return cfg, folder


def plan(grid: Grid, extra: Sequence[str] = ()) -> list[list[PlannedRun]]:
    """Every run of ``grid`` with ``extra`` overrides, per sweep: composed (errors surface here), with the
    folder Hydra's sweeper will give it (``hydra.sweep.dir``/``hydra.sweep.subdir``)."""
    import hydra

    check_method_options(grid, extra)
    sweeps: list[list[PlannedRun]] = []
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for index, sweep in enumerate(grid.sweeps):
            overrides = with_overrides(sweep, extra)
            hydra_overrides = [o for o in overrides if _parse([o])[0].is_hydra_override()]
            runs = []
            for job in expand(overrides):
                try:
                    cfg, folder = compose_run([*job, *hydra_overrides])
                except Exception as error:  # Hydra's errors name the bad override
                    raise ValueError(f"grid {grid.name!r}, sweep {index + 1}: run {' '.join(job)} does not compose: "
                                     f"{error}") from error
                runs.append(PlannedRun(index, job, cfg, folder))
            sweeps.append(runs)
    check_folders(sweeps)
    return sweeps


def check_folders(sweeps: Sequence[Sequence[PlannedRun]]) -> None:
    """Refuse a grid in which two runs would share a folder: within one sweep (they could run at the same time
    and the second would be skipped as finished) or across sweeps with different configs. Runs with the same
    config in different sweeps may share one (it is trained once)."""
    from mimmo.runs.folder import semantic_config

    seen: dict[Path, PlannedRun] = {}
    for runs in sweeps:
        for run in runs:
            other = seen.get(run.folder)
            if other is None:
                seen[run.folder] = run
                continue
            same_config = semantic_config(other.config) == semantic_config(run.config)
            if other.sweep == run.sweep or not same_config:
                raise ValueError(
                    f"runs {' '.join(other.overrides)!r} (sweep {other.sweep + 1}) and {' '.join(run.overrides)!r} "
                    f"(sweep {run.sweep + 1}) would share the folder {run.folder}: an override that tells them apart "
                    "is left out of run folder names (hydra.job.config.override_dirname.exclude_keys); sweep it "
                    "in separate output_dir values or not at all")


def validate(sweeps: Sequence[Sequence[PlannedRun]]) -> int:
    """Validate every run of the grid without training, as ``mimmo train`` would before training: the method
    of every distinct (method, M, model, data) is built and run on one input; a run that differs from an
    earlier one only in other settings (alpha, seed, the recipe) has its training settings checked and its
    method constructed. Return the number of methods built and run; raise ValueError naming the first bad run."""
    from omegaconf import OmegaConf

    from mimmo.methods.registry import build_method
    from mimmo.models.registry import build_backbone_factory
    from mimmo.training.build import (
        build_method_from_config,
        input_spec,
        method_options,
        model_input_shape,
        validate_training,
    )

    def key(cfg: DictConfig, *parts: str) -> str:
        return repr(OmegaConf.to_container(OmegaConf.masked_copy(cfg, list(parts)), resolve=True))

    shapes: set[str] = set()
    checked: set[str] = set()
    for runs in sweeps:
        for run in runs:
            cfg = run.config
            settings = key(cfg, "method", "model", "data", "train")
            shape = repr((cfg.method.name, cfg.method.get("num_members"), key(cfg, "model", "data")))
            try:
                check_known_keys(cfg)  # every run: a top-level setting is not part of ``settings``
                if settings in checked:
                    continue
                input_shape, num_classes = input_spec(cfg)
                if shape in shapes:
                    validate_training(cfg)
                    build_method(cfg.method.name, build_backbone_factory(cfg.model),
                                 model_input_shape(cfg, input_shape)[0], num_classes, method_options(cfg))
                else:
                    build_method_from_config(cfg, input_shape, num_classes)
                    shapes.add(shape)
            except ValueError as error:
                raise ValueError(f"run {' '.join(run.overrides)!r} (sweep {run.sweep + 1}) is invalid: "
                                 f"{error}") from error
            checked.add(settings)
    return len(shapes)


def check_grid_data(sweeps: Sequence[Sequence[PlannedRun]]) -> None:
    """Every run's data is there (or will be downloaded), checked once per distinct data config before anything
    runs; FileNotFoundError naming the dataset, the path and a run that needs it. A finished or cut-off run whose
    dataset files differ from those it was trained on is refused (ValueError saying what differs)."""
    from omegaconf import OmegaConf

    from mimmo.data.registry import check_data, dataset_identity
    from mimmo.runs.folder import check_same_dataset

    identities: dict[str, dict[str, Any] | None] = {}
    for runs in sweeps:
        for run in runs:
            key = repr(OmegaConf.to_container(run.config.data, resolve=True))
            if key not in identities:
                try:
                    check_data(run.config.data)
                except FileNotFoundError as error:
                    raise FileNotFoundError(f"run {' '.join(run.overrides)!r} (sweep {run.sweep + 1}): {error}") \
                        from error
                identities[key] = dataset_identity(run.config.data)
            if run.status != "new":  # a finished or cut-off run on other files is never skipped or resumed
                check_same_dataset(run.config, run.folder, identities[key])


def sweep_command(sweep: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The ``mimmo train`` arguments that run one sweep."""
    return ["--multirun", *with_overrides(sweep, extra)]


def product_blocks(jobs: Sequence[Sequence[str]]) -> list[list[list[str]]]:
    """Cover ``jobs`` (override tuples of one sweep: position i sets the same key in every job) exactly by
    Cartesian blocks, each a list of the values (``key=value`` strings) per position, in first-seen order."""
    if not jobs:
        return []
    if not jobs[0]:
        return [[]]
    blocks: dict[str, tuple[list[str], list[list[list[str]]]]] = {}
    for first in dict.fromkeys(job[0] for job in jobs):
        rest = product_blocks([job[1:] for job in jobs if job[0] == first])
        blocks.setdefault(repr(rest), ([], rest))[0].append(first)  # same rest: one block over these firsts
    return [[firsts, *block] for firsts, rest in blocks.values() for block in rest]


def block_overrides(block: Sequence[Sequence[str]]) -> list[str]:
    """One block's overrides: ``key=v1,v2`` for a position with several values (``key=v`` for one)."""
    overrides = []
    for values in block:
        if len(values) == 1:
            overrides.append(values[0])
        else:
            key = values[0].split("=", 1)[0]
            overrides.append(f"{key}={','.join(value.split('=', 1)[1] for value in values)}")
    return overrides


def pending_commands(sweep: Sequence[str], extra: Sequence[str], runs: Sequence[PlannedRun]) -> list[list[str]]:
    """The ``mimmo train`` arguments that run exactly the unfinished runs of one sweep: the sweep itself when none
    is finished, no command when all are, else one ``--multirun`` per Cartesian block of the unfinished runs
    (so that a cluster launcher never submits a job only for it to find its run finished)."""
    pending = [run for run in runs if run.status != "finished"]
    if len(pending) == len(runs):
        return [sweep_command(sweep, extra)]
    hydra_overrides = [o for o in with_overrides(sweep, extra) if _parse([o])[0].is_hydra_override()]
    return [["--multirun", *block_overrides(block), *hydra_overrides]
            for block in product_blocks([run.overrides for run in pending])]


def job_failure(text: str) -> tuple[str, int]:
    """From the text of submitit's error for a job (its stderr tail and paths): mimmo's one line with the job's
    log path, and the exit status: 128 + the signal for a job stopped by SIGTERM/SIGINT, 143 for one that hit its
    time limit and was not requeued (both resume from their checkpoint), else 1."""
    lines = [line.strip() for line in text.splitlines()]
    mimmo_lines = [line for line in lines if line.startswith("mimmo ")]
    sections = re.split(r"^-{3,}$", text, flags=re.MULTILINE)  # submitit puts the job's trace or stderr between
    stream = [line.strip() for line in (sections[1] if len(sections) > 1 else text).splitlines() if line.strip()]
    message = (mimmo_lines or stream or ["the job ended without a message"])[-1]
    logs = [line[2:] for line in lines if line.startswith("- ") and line.endswith("_log.err")]
    if not logs:
        result = next((line.split(" with path ", 1)[1].split()[0] for line in lines if " with path " in line), None)
        logs = [result.removesuffix("_result.pkl") + "_log.err"] if result else []
    stopped = {"SIGTERM": 143, "SIGINT": 130}
    code = next((code for name, code in stopped.items() if f"stopped by {name}" in message), 1)
    if "not requeued because" in text:  # submitit at a time limit, without hydra.launcher.max_num_timeout left
        code = 143
    return f"{message} (its log: {logs[0] if logs else 'none found'})", code


@contextmanager
def one_line_job_failures(out: Callable[[str], None], prefix: str = "[grid]") -> Iterator[None]:
    """While a sweep runs with Hydra's submitit launcher: a job that fails or is stopped ends the sweep with
    mimmo's one line and the job's log path (SystemExit: 143 or 130 for a job stopped by a signal, else 1), not
    submitit's error in a traceback."""
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin scan imports the launcher modules anew: patch the class Hydra will use
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
        from submitit.core.utils import FailedJobError, UncompletedJobError
    except ImportError:  # no submitit launcher installed: nothing to translate
        yield
        return
    original = BaseSubmititLauncher.launch
    if getattr(original, "one_line", False):  # an enclosing command (mimmo grid) already translates them
        yield
        return

    def launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        try:
            return original(self, job_overrides, initial_job_idx)
        except (UncompletedJobError, FailedJobError) as error:
            message, code = job_failure(str(error))
            out(f"{prefix} a job {'was stopped' if code != 1 else 'failed'}: {message}")
            raise SystemExit(code) from None

    launch.one_line = True  # type: ignore[attr-defined]
    BaseSubmititLauncher.launch = launch  # type: ignore[method-assign]
    try:
        yield
    finally:
        BaseSubmititLauncher.launch = original  # type: ignore[method-assign]


def _summary(runs: Sequence[PlannedRun]) -> str:
    counts = {status: sum(run.status == status for run in runs) for status in ("finished", "partial", "new")}
    return (f"{len(runs)} run{'s' * (len(runs) != 1)}: {counts['finished']} finished, "
            f"{counts['partial']} to resume, {counts['new']} new")


def run_grid(name: str, extra: Sequence[str] = (), dry_run: bool = False,
             train: Callable[[list[str]], None] | None = None, out: Callable[[str], None] = print) -> int:
    """Run (or with ``dry_run`` only plan and validate) grid ``name``; return its number of runs.

    ``train`` runs one sweep from ``mimmo train`` arguments (``mimmo.cli.train.main`` runs it in process);
    it is needed unless ``dry_run``.
    """
    grid = load_grid(name)
    sweeps = plan(grid, extra)
    check_grid_data(sweeps)
    total = sum(len(runs) for runs in sweeps)
    distinct = len({run.folder for runs in sweeps for run in runs})
    shared = f", {total - distinct} shared between sweeps" if distinct != total else ""
    out(f"[grid] {grid.name}: {grid.description}".rstrip(": "))
    out(f"[grid] {len(sweeps)} sweep{'s' * (len(sweeps) != 1)}, {total} runs in {distinct} folders{shared}")
    for index, (sweep, runs) in enumerate(zip(grid.sweeps, sweeps, strict=True)):
        command = " ".join(shlex.quote(a) for a in ["mimmo", "train", *sweep_command(sweep, extra)])
        out(f"[grid] sweep {index + 1}/{len(sweeps)} ({_summary(runs)}): {command}")
    if dry_run:
        built = validate(sweeps)
        out(f"[grid] dry run: every run composes and validates, its data is there or will be downloaded "
            f"({built} distinct methods built); nothing trained")
        return total
    if train is None:
        raise ValueError("run_grid needs train (e.g. mimmo.cli.train.main) unless dry_run")
    for index, (sweep, runs) in enumerate(zip(grid.sweeps, sweeps, strict=True)):
        commands = pending_commands(sweep, extra, runs)  # statuses now: an earlier sweep may have run shared ones
        if not commands:
            out(f"[grid] sweep {index + 1}/{len(grid.sweeps)}: its {len(runs)} runs are finished; nothing to run")
        for arguments in commands:
            left_out = "" if arguments == sweep_command(sweep, extra) else " (its unfinished runs only)"
            out(f"[grid] running sweep {index + 1}/{len(grid.sweeps)}{left_out}: mimmo train "
                f"{' '.join(map(shlex.quote, arguments))}")
            try:
                with one_line_job_failures(out):
                    train(arguments)
            except SystemExit as error:
                if error.code not in (None, 0):  # a failure, a refusal or a signal (143, 130): not finished
                    if error.code in (130, 143):
                        out(f"[grid] sweep {index + 1} stopped (resume by running the grid again)")
                    else:
                        out(f"[grid] sweep {index + 1} failed; run the grid again once it is fixed (finished runs "
                            "are skipped, cut-off ones resume)")
                raise
    out(f"[grid] {grid.name}: done")
    return total


def list_grids(out: Callable[[str], None] = print) -> None:
    for name in available_grids():
        grid = load_grid(name)
        count = sum(len(expand(sweep)) for sweep in grid.sweeps)
        out(f"{name:<20} {count:>4} runs  {grid.description}")


def help_text() -> str:
    return USAGE


def parser() -> argparse.ArgumentParser:
    """NAME and the flags; every other argument is an override for the grid's runs."""
    grid = argparse.ArgumentParser(prog="mimmo grid", usage=USAGE, add_help=False)
    grid.add_argument("name", nargs="?")
    grid.add_argument("--list", action="store_true")
    grid.add_argument("--dry-run", action="store_true")
    return grid


def main(argv: Sequence[str], train: Callable[[list[str]], None] | None = None) -> None:
    """``mimmo grid`` from its arguments (after ``grid``); ``train`` runs one sweep (default: ``mimmo train`` in
    this process; see :func:`run_grid`)."""
    args, overrides = parser().parse_known_args(list(argv))
    if args.list:
        list_grids()
        return
    if args.name is None or args.name.startswith("-"):
        raise SystemExit(USAGE + f"\nmimmo grid: give a grid name; one of {sorted(available_grids())}")
    from mimmo.cli.errors import run_reporting_errors
    from mimmo.cli.train import main as train_main

    run_reporting_errors("grid", lambda: run_grid(args.name, overrides, dry_run=args.dry_run,
                                                  train=train or train_main))
