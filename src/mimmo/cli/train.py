"""``mimmo train``: one run, or a sweep with ``--multirun``; every run is checked before Hydra creates a folder.

Its arguments are Hydra overrides (``method=mimo method.num_members=4 seed=1``) and Hydra's own flags, which
Hydra parses, not argparse. A run stopped by SIGTERM or SIGINT exits with 143 or 130 and resumes when the same
command is run again.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mimmo.cli.errors import run_reporting_errors
from mimmo.config import CONFIG_DIR, check_overrides_parse, compose

RUN_FOLDER = """\
where runs go: one folder per run under output_dir (default runs/), named after the overrides
(runs/method=mimmo,seed=1/): config.yaml, checkpoints/last.ckpt (every epoch; starting the same command
again resumes from it), log/metrics.csv, weights.safetensors, and metrics.json (written last: a run that
has it is skipped and its summary shown)."""


def train_help() -> str:
    """``mimmo train --help`` (the method names from the registry, imported only when asked)."""
    from mimmo.methods.registry import METHODS

    return TRAIN_HELP.format(methods=", ".join(METHODS), run_folder=RUN_FOLDER)


TRAIN_HELP = """\
usage: mimmo train [--multirun] [--verbose] [KEY=VALUE ...]

Train one run (with --multirun: one run per combination of comma-separated values), evaluate it on the
clean test set, the 25 shifted test sets and the validation set, and end with a summary: the run folder,
test accuracy, NLL, ECE, Brier and the time taken.

options (Hydra overrides KEY=VALUE; every key with its meaning is in src/mimmo/configs/; a key that no config
file declares is refused):
  method=NAME              {methods}
                           (default mimmo)
  method.num_members=M     ensemble size of the methods with members (default 2)
  method.alpha=A           KL weight of mimmo and dun (1 gives the ELBO per data point)
  data=NAME                embedded (default, shipped), cifar10, cifar100 (data.root=DIR or MIMMO_DATA=DIR)
  experiment=NAME          a preset: fast (the demo's, CPU), paper, paper_mini
  train=NAME               paper (default: 100 epochs) or fast; train.epochs=N, train.batch_size=B, train.lr=LR
  train.optimizer=adam|sgd the optimiser (default adam); sgd: train.momentum=0.9, train.nesterov=false
  train.weight_decay=WD    L2 on the gradient, both optimisers (default 0)
  train.schedule=cosine|step  per epoch (default cosine to 0); step: train.milestones=[E1,E2,...] (epochs),
                           train.lr_decay=0.1 at each
  train.augment=none|crop_flip  random 4-pixel-padded crop + horizontal flip per member input (default none)
  model.width=W            width multiplier of the ResNet backbone
  seed=S                   the split, the initialisation and every random draw of training (default 0)
  output_dir=DIR           where run folders go (default runs)
  train.accelerator=cpu|gpu|auto  train.devices=N  train.precision=bf16-mixed  train.progress_bar=false

flags:
  --multirun, -m           a sweep: comma-separated values, e.g. method=mimo,mimmo seed=0,1,2
  --verbose                show Lightning's info lines and the libraries' warnings
  --cfg job                print the composed config and exit
  --hydra-help             Hydra's own flags (launchers, sweepers, ...)

{run_folder}

examples:
  mimmo train experiment=fast method=mimo
  mimmo train method=mimmo method.num_members=4 data=cifar100 seed=1
  mimmo train --multirun experiment=fast method=base,mimo,mimmo seed=0,1
"""


def help_text() -> str:
    return train_help()


def check_training_runs(overrides: list[str]) -> Path | None:
    """Compose and check every run that ``mimmo train <overrides>`` would start (settings, data, method) before
    Hydra creates any folder; return the single run's folder (None for ``--multirun``)."""
    from mimmo.cli.grid import Grid, compose_run, plan, validate
    from mimmo.runs.train import finished_metrics
    from mimmo.training.build import check_data_fits, load_splits, prepare_run

    multirun = any(o in ("--multirun", "-m") for o in overrides)
    overrides = [o for o in overrides if o not in ("--multirun", "-m")]
    if multirun:
        sweeps = plan(Grid("mimmo train --multirun", "", (tuple(overrides),), Path(CONFIG_DIR)), [])
        validate(sweeps)
        data: dict[str, object] = {}
        for run in sweeps[0]:
            key = repr(run.config.data)
            if key not in data:
                data[key] = load_splits(run.config)
            check_data_fits(run.config, data[key])  # type: ignore[arg-type]
        return None
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg, folder = compose_run(overrides, in_sweep=False)
    if finished_metrics(cfg, folder) is None:
        prepare_run(cfg)
    return folder


_invoked_as = sys.argv[0]  # the script that started this process (mimmo's console script, or a -m module)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _train_main(cfg: DictConfig) -> float | None:
    from mimmo.runs.console import configure_console
    from mimmo.runs.train import train

    configure_console()  # after Hydra configured this job's logging (in every process of a sweep)

    # Lightning's DDP launcher (train.strategy=ddp) starts ranks 1.. by running this process's command line
    # again (plus hydra.run.dir=<this run's folder>): make that command line this one run, `mimmo train <its
    # overrides>`, not the sweep it belongs to.
    sys.argv = [_invoked_as, "train", *HydraConfig.get().overrides.task]
    metrics = run_reporting_errors("train", lambda: train(cfg, HydraConfig.get().runtime.output_dir))
    return metrics.get("test", {}).get("nll") if metrics else None


def check_data_before_start(overrides: list[str]) -> None:
    """Before Hydra makes any run folder: every run's data is there (or will be downloaded); FileNotFoundError
    naming the dataset and the path otherwise. Each distinct data config of a ``--multirun`` sweep is checked
    once."""
    from omegaconf import OmegaConf

    from mimmo.cli.grid import expand
    from mimmo.data.registry import check_data

    flags = {o for o in overrides if o.startswith("-")}
    if flags - {"--multirun", "-m"}:
        return  # --help, --cfg, --info, ...: Hydra answers them and nothing trains
    arguments = [o for o in overrides if o not in flags]
    checked: set[str] = set()
    try:
        jobs = expand(arguments) if arguments else [()]
        for job in jobs:
            data = compose(list(job)).data
            key = repr(OmegaConf.to_container(data, resolve=True))
            if key not in checked:
                check_data(data)
                checked.add(key)
    except (HydraException, OmegaConfBaseException):
        return  # an override that does not compose: Hydra reports it next, with its own message


def main(overrides: list[str]) -> None:
    """``mimmo train <overrides>``: every run checked first, then Hydra's entry point (its launchers, DDP)."""
    from mimmo.cli.grid import one_line_job_failures
    from mimmo.runs.folder import is_rank_zero_launcher, lock

    hydra_flags = [o for o in overrides if o.startswith("-") and o not in ("--multirun", "-m")]
    with ExitStack() as held:
        def check_and_lock() -> None:
            check_overrides_parse(overrides)
            check_data_before_start(overrides)
            folder = None if hydra_flags else check_training_runs(overrides)
            if folder is not None and is_rank_zero_launcher():
                held.enter_context(lock(folder, "mimmo train"))  # before Hydra writes .hydra/ and cli.log there

        run_reporting_errors("train", check_and_lock)
        saved = sys.argv
        sys.argv = ["mimmo train", *overrides]
        try:
            with one_line_job_failures(lambda line: print(line, file=sys.stderr), "mimmo train:"):
                _train_main()
        finally:
            sys.argv = saved
