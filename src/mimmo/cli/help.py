"""The help texts of the ``mimmo`` command: each command's options, an example and where its output goes."""

from __future__ import annotations

DESCRIPTION = """\
mimmo: MIMMO (Multi-Input Massive Multi-Output networks, Ferianc & Rodrigues, CVPR Workshops 2023) and the
efficient-ensemble baselines it is measured against; training, evaluation on 25 shifted test sets, reports.

`mimmo COMMAND --help` describes a command. Global flag: --verbose shows Lightning's info lines and the
libraries' warnings (hidden by default)."""

EPILOG = """\
examples:
  mimmo demo                                   Base, MIMO and MIMMO on the embedded data, one table
  mimmo train experiment=fast method=mimo      one run into runs/experiment=fast,method=mimo/
  mimmo report runs --out reports              tables and figures from every run under runs/"""

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

COST_HELP = """\
usage: mimmo cost [--table] [--members 2,4,8] [KEY=VALUE ...]

FLOPs and parameters of one test-time prediction (batch 1, every member, sample and exit counted) in the
paper's convention, from the config's shapes alone: nothing is trained or read from disk.

options:
  KEY=VALUE                the same overrides as `mimmo train` (method=..., method.num_members=..., data=...,
                           model.width=...)
  --table                  the cost columns of the paper's Tables 1-3: every method, one table per M
  --members 2,4,8          the ensemble sizes of --table

examples:
  mimmo cost method=base data=cifar100           109.85 M FLOPs, 1.76 M params
  mimmo cost --table data=cifar100 --members 2,4
"""

EVALUATE_EPILOG = """\
The run folder's metrics.json is rewritten (its training time and exit-weight history are kept). --anytime,
--prune-exits and --ood only add their sections ('anytime', 'pruned'; 'ood', 'selective', 'decomposition').

example:
  mimmo evaluate runs/method=mimmo,seed=1 --device cpu"""

REPORT_EPILOG = """\
Runs that differ in a setting (train.epochs, data.train_size, ...) go to separate tables, one per
combination of those settings; each table aggregates seeds (mean ± half-width of the 95% t interval from two
seeds on). comparison.md pairs every method with the --reference method seed by seed (mean difference, its 95%
interval, seeds won); per_seed.csv has every run's numbers; report.md starts with the runs' provenance.
Output: OUT/report.md, comparison.md, per_seed.csv, one .md/.tex/.csv per table and OUT/figures/*.png.

example:
  mimmo report runs/paper --out reports/paper"""

DEMO_EPILOG = """\
Trains with the demo preset (experiment=demo: 250 training images, batch 16, 50 epochs, seed 0, the paper's
recipe; long enough for MIMMO's exit weights to settle) into one folder per configuration under
--output-dir, so that runs with other --epochs never collide; a finished run is reused (its time shows as
"reused"). Under the table, lines on what it shows, and one naming any run whose training was still falling.

examples:
  mimmo demo
  mimmo demo --epochs 100 --output-dir /tmp/demo"""
