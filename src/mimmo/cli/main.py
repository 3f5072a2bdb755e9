"""The ``mimmo`` command: the global flags, ``--help`` for every command, and the one dispatch table.

Each command is a module of :mod:`mimmo.cli` with ``help_text()`` and ``main(arguments)``; its one-line summary is
in :data:`COMMANDS`.
A bad setting or input is refused before any work or folder is created, as one line naming the value and what
is allowed, with exit status 2 (``--debug`` or MIMMO_DEBUG=1 adds the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

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

# command -> (its module, the line ``mimmo --help`` shows for it), in the order ``mimmo --help`` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mimmo.cli.train", "train one run (or a sweep with --multirun); Hydra overrides follow"),
    "grid": ("mimmo.cli.grid", "run a named grid of trainings (configs/grid/); --list, --dry-run"),
    "evaluate": ("mimmo.cli.evaluate", "evaluate a finished run folder again (clean and shifted test sets)"),
    "calibrate": ("mimmo.cli.calibrate", "fit a temperature on the validation split of finished runs and add the "
                                         "calibrated metrics to their metrics.json"),
    "cost": ("mimmo.cli.cost", "FLOPs and params of one test-time prediction; Hydra overrides follow"),
    "report": ("mimmo.cli.report", "tables and figures from saved run folders (never retrains)"),
    "demo": ("mimmo.cli.demo", "train Base, MIMO and MIMMO (M=2) on the embedded data; print a table"),
}


def summary(command: str) -> str:
    """The one-line description of ``command`` (its ``--help`` starts with it)."""
    return COMMANDS[command][1]


def build_parser() -> argparse.ArgumentParser:
    """The top level: global flags and the command name; the command's own arguments go to its module."""
    from mimmo import __version__

    listing = "\n".join(f"  {name:<10} {line}" for name, (_, line) in COMMANDS.items())
    parser = argparse.ArgumentParser(prog="mimmo", description=DESCRIPTION, epilog=f"commands:\n{listing}\n\n{EPILOG}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mimmo {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show Lightning's info lines and the libraries' warnings (any command)")
    parser.add_argument("--debug", action="store_true", help="a traceback with every refusal (any command)")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's arguments (mimmo COMMAND --help)")
    return parser


def main(argv: list[str] | None = None) -> None:
    from mimmo.runs.console import pop_verbose

    argv = pop_verbose(list(sys.argv[1:] if argv is None else argv))
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ["MIMMO_DEBUG"] = "1"  # also for the processes a DDP launcher starts
    args = build_parser().parse_args(argv)
    command = import_module(COMMANDS[args.command][0])
    if "-h" in args.arguments or "--help" in args.arguments:
        print(command.help_text())
        return
    command.main(args.arguments)
