"""The ``mimmo`` command: train, grid, evaluate, cost, report, demo.

``mimmo train`` and ``mimmo cost`` take Hydra overrides (``method=mimo method.num_members=4 seed=1``);
``mimmo train --multirun`` sweeps a grid with Hydra's launchers.
"""

from __future__ import annotations

import argparse
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mimmo.config import CONFIG_DIR, compose

_invoked_as = sys.argv[0]  # the script that started this process (mimmo's console script, or a -m module)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _train_main(cfg: DictConfig) -> float | None:
    from mimmo.console import configure_console
    from mimmo.training import train

    configure_console()  # after Hydra configured this job's logging (in every process of a sweep)

    # Lightning's DDP launcher (train.strategy=ddp) starts ranks 1.. by running this process's command line
    # again (plus hydra.run.dir=<this run's folder>): make that command line this one run, `mimmo train <its
    # overrides>`, not the sweep it belongs to.
    sys.argv = [_invoked_as, "train", *HydraConfig.get().overrides.task]
    metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    return metrics.get("test", {}).get("nll") if metrics else None


def check_data_before_start(overrides: list[str]) -> None:
    """Before Hydra makes any run folder: every run's data is there (or will be downloaded); SystemExit naming
    the dataset and the path otherwise. Each distinct data config of a ``--multirun`` sweep is checked once."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from mimmo.data.registry import check_data
    from mimmo.grid import expand

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
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"mimmo train: {error}") from error


def train_command(overrides: list[str]) -> None:
    if "--help" in overrides or "-h" in overrides:
        from mimmo.cli_help import train_help

        print(train_help())
        return
    check_data_before_start(overrides)
    saved = sys.argv
    sys.argv = ["mimmo train", *overrides]
    try:
        _train_main()
    finally:
        sys.argv = saved


def cost_table_command(overrides: list[str]) -> None:
    """``mimmo cost --table [--members 2,4,8] [model/data overrides]``: every method, the paper's layout."""
    from mimmo.evaluation.cost_table import cost_table, format_cost_table
    from mimmo.models.backbone import backbone_input_shape
    from mimmo.models.registry import build_backbone_factory
    from mimmo.training import input_spec

    members = [2, 4, 8]
    if "--members" in overrides:
        position = overrides.index("--members")
        try:
            members = [int(m) for m in overrides[position + 1].split(",")]
        except (IndexError, ValueError) as error:
            raise SystemExit(f"--members takes a comma-separated list of integers, e.g. 2,4,8 ({error})") from error
        overrides = overrides[:position] + overrides[position + 2:]
    cfg = compose([o for o in overrides if o != "--table"])
    data_shape, num_classes = input_spec(cfg)
    factory = build_backbone_factory(cfg.model)
    input_shape = backbone_input_shape(factory, data_shape)
    print(f"{cfg.data.name} {data_shape}, {num_classes} classes, model {dict(cfg.model)}\n")
    for num_members in members:
        print(format_cost_table(cost_table(num_members, input_shape, num_classes, factory), num_members))


def cost_command(overrides: list[str]) -> None:
    from mimmo.evaluation.cost import count_cost
    from mimmo.training import build_method_from_config, input_spec, model_input_shape

    if "--help" in overrides or "-h" in overrides:
        from mimmo.cli_help import COST_HELP

        print(COST_HELP)
        return
    if "--table" in overrides:
        cost_table_command(overrides)
        return
    cfg = compose(overrides)
    input_shape, num_classes = input_spec(cfg)
    method = build_method_from_config(cfg, input_shape, num_classes)
    cost = count_cost(method, model_input_shape(cfg, input_shape))
    print(f"{cfg.method.name} (M={method.num_members}, D={method.num_exits}) on {cfg.data.name} {input_shape}: "
          f"{cost.flops / 1e6:.2f} M FLOPs, {cost.params / 1e6:.2f} M params "
          f"({cost.flops:,} FLOPs, {cost.params:,} params; one test-time prediction, paper convention)")


def best_device(name: str = "auto") -> str:
    """``auto``: the first CUDA device where there is one, else the CPU; any other name is kept as given."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    from mimmo import __version__
    from mimmo.cli_help import DEMO_EPILOG, DESCRIPTION, EPILOG, EVALUATE_EPILOG, REPORT_EPILOG

    def command(name: str, help: str, epilog: str | None = None, **options: bool) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **options)

    parser = argparse.ArgumentParser(prog="mimmo", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mimmo {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show Lightning's info lines and the libraries' warnings (any command)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command("train", "train one run (or a sweep with --multirun); Hydra overrides follow", add_help=False)
    command("grid", "run a named grid of trainings (configs/grid/); --list, --dry-run", add_help=False)
    evaluate = command("evaluate", "evaluate a finished run folder again (clean and shifted test sets)",
                       EVALUATE_EPILOG)
    evaluate.add_argument("run_dir", help="a run folder (holds config.yaml and weights.safetensors)")
    evaluate.add_argument("--device", default="auto",
                          help="cpu, cuda, cuda:1, ...; auto (default): cuda where available, else cpu")
    command("cost", "FLOPs and params of one test-time prediction; Hydra overrides follow", add_help=False)
    report = command("report", "tables and figures from saved run folders (never retrains)", REPORT_EPILOG)
    report.add_argument("paths", nargs="+", help="run folders, or folders that contain run folders")
    report.add_argument("--out", default="reports", help="where the tables and figures go (default reports)")
    report.add_argument("--no-figures", action="store_true", help="tables only")
    demo = command("demo", "train Base, MIMO and MIMMO (M=2) on the embedded data; print a table", DEMO_EPILOG)
    demo.add_argument("--output-dir", default="runs/demo", help="where the demo's runs go (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=None,
                      help="override the fast preset's 5 epochs (at least 2: MIMMO's warm start takes 1)")
    return parser


def main(argv: list[str] | None = None) -> None:
    from mimmo.console import pop_verbose

    argv = pop_verbose(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] == "grid":
        from mimmo.grid import main as grid_main

        grid_main(argv[1:], train=train_command)
        return
    if argv and argv[0] in ("train", "cost"):
        command, rest = argv[0], argv[1:]
        if command == "train":
            train_command(rest)
        else:
            cost_command(rest)
        return
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        from mimmo.console import configure_console, run_summary
        from mimmo.training import evaluate_run

        configure_console()
        device = best_device(args.device)
        print(f"evaluating {args.run_dir} on {device}", flush=True)
        results = evaluate_run(args.run_dir, device=device)
        print(run_summary(args.run_dir, results) + "\n(metrics.json updated)")
    elif args.command == "report":
        from mimmo.report import report as make_report

        print(make_report(args.paths, args.out, figures=not args.no_figures))
    elif args.command == "demo":
        from mimmo.console import configure_console
        from mimmo.demo import run_demo

        configure_console()
        run_demo(args.output_dir, args.epochs)


if __name__ == "__main__":
    main()
