"""The ``mimmo`` command: train, grid, evaluate, calibrate, cost, report, demo.

``mimmo train`` and ``mimmo cost`` take Hydra overrides (``method=mimo method.num_members=4 seed=1``);
``mimmo train --multirun`` sweeps a grid with Hydra's launchers.

A bad setting or input is refused before any work or folder is created, as one line naming the value and what
is allowed, with exit status 2 (``--debug`` or MIMMO_DEBUG=1 adds the traceback). A run stopped by SIGTERM or
SIGINT exits with 143 or 130 and resumes when the same command is run again.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mimmo.cli.errors import run_reporting_errors
from mimmo.config import CONFIG_DIR, check_overrides_parse, compose
from mimmo.runs.folder import register_resolvers

register_resolvers()




def check_training_runs(overrides: list[str]) -> Path | None:
    """Compose and check every run that ``mimmo train <overrides>`` would start (settings, data, method) before
    Hydra creates any folder; return the single run's folder (None for ``--multirun``)."""
    from mimmo.cli.grid import Grid, _hydra_config, plan, validate
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
        cfg = hydra.compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with _hydra_config(cfg):
        folder = Path(str(cfg.hydra.run.dir))
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
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


def train_command(overrides: list[str]) -> None:
    """``mimmo train <overrides>``: every run checked first, then Hydra's entry point (its launchers, DDP)."""
    if "--help" in overrides or "-h" in overrides:
        from mimmo.cli.help import train_help

        print(train_help())
        return
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


def cost_table_command(overrides: list[str]) -> None:
    """``mimmo cost --table [--members 2,4,8] [model/data overrides]``: every method, the paper's layout."""
    from mimmo.evaluation.cost_table import cost_table, format_cost_table
    from mimmo.models.backbone import backbone_input_shape
    from mimmo.models.registry import build_backbone_factory
    from mimmo.training.build import input_spec

    members = [2, 4, 8]
    if "--members" in overrides:
        position = overrides.index("--members")
        given = overrides[position + 1] if position + 1 < len(overrides) else None
        try:
            members = [int(m) for m in str(given).split(",")]
        except ValueError:
            members = []
        if given is None or not members or min(members) < 1:
            raise ValueError(f"--members takes a comma-separated list of integers >= 1, e.g. 2,4,8, got {given!r}")
        overrides = overrides[:position] + overrides[position + 2:]
    cfg = compose([o for o in overrides if o != "--table"])
    data_shape, num_classes = input_spec(cfg)
    factory = build_backbone_factory(cfg.model)
    input_shape = backbone_input_shape(factory, data_shape)
    print(f"{cfg.data.name} {data_shape}, {num_classes} classes, model {dict(cfg.model)}\n")
    for num_members in members:
        print(format_cost_table(cost_table(num_members, input_shape, num_classes, factory), num_members))


def run_cost_command(arguments: list[str]) -> None:
    """``mimmo cost --run RUN_DIR [--prune-exits EPS]``: the cost of a trained run, full and with exits pruned."""
    parser = argparse.ArgumentParser(prog="mimmo cost --run", description=run_cost_command.__doc__)
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument("--prune-exits", type=float, default=None, metavar="EPS",
                        help="also the network with every exit whose weight is < EPS dropped")
    args = parser.parse_args(arguments)
    from mimmo.runs.posthoc import run_cost

    cost = run_cost(args.run, args.prune_exits)
    print(f"{args.run}: {cost['method']} (M={cost['num_members']}, D={cost['num_exits']}) on {cost['input_shape']}: "
          f"{cost['flops'] / 1e6:.2f} M FLOPs, {cost['params'] / 1e6:.4f} M params ({cost['flops']:,} FLOPs, "
          f"{cost['params']:,} params)")
    if "pruned" in cost:
        pruned = cost["pruned"]
        kept = ", ".join(str(i + 1) for i, used in enumerate(pruned["exits_used"]) if used)
        print(f"exits pruned at EPS={args.prune_exits:g}: exits {kept} of {cost['num_exits']} run (stages 1-"
              f"{pruned['deepest_stage']}): {pruned['cost']['flops'] / 1e6:.2f} M FLOPs "
              f"({pruned['cost']['flops'] / cost['flops']:.1%}), {pruned['cost']['params'] / 1e6:.4f} M params "
              f"({pruned['cost']['flops']:,} FLOPs, {pruned['cost']['params']:,} params); weights per exit and member "
              f"{[[round(w, 4) for w in row] for row in pruned['weights']]}")


def cost_command(overrides: list[str]) -> None:
    from mimmo.evaluation.cost import count_cost
    from mimmo.training.build import build_method_from_config, input_spec, model_input_shape

    if "--help" in overrides or "-h" in overrides:
        from mimmo.cli.help import COST_HELP

        print(COST_HELP)
        return
    if "--table" in overrides:
        cost_table_command(overrides)
        return
    if any(o == "--run" or o.startswith("--run=") for o in overrides):
        run_cost_command(overrides)
        return
    check_overrides_parse(overrides)
    cfg = compose(overrides)
    input_shape, num_classes = input_spec(cfg)
    method = build_method_from_config(cfg, input_shape, num_classes)
    cost = count_cost(method, model_input_shape(cfg, input_shape))
    print(f"{cfg.method.name} (M={method.num_members}, D={method.num_exits}) on {cfg.data.name} {input_shape}: "
          f"{cost.flops / 1e6:.2f} M FLOPs, {cost.params / 1e6:.2f} M params "
          f"({cost.flops:,} FLOPs, {cost.params:,} params; one test-time prediction, paper convention)")


def _thresholds(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"thresholds are comma-separated numbers in [0, 1], got {text!r}") from error


def posthoc_evaluate(args: argparse.Namespace) -> None:
    """``mimmo evaluate RUN_DIR --anytime / --prune-exits EPS / --ood``: add those sections, leave the rest."""
    from mimmo.runs.posthoc import add_anytime, add_ood, add_pruned

    if args.ood:
        sections = run_reporting_errors("evaluate", lambda: add_ood(args.run_dir, device=args.device))
        selective = sections["selective"]["test"]
        print(f"{args.run_dir}: selective AURC {selective['aurc']:.4f}, E-AURC {selective['e_aurc']:.4f}; "
              f"MI over members and exits {sections['decomposition']['test']['mi_both']:.4f} nats (metrics.json "
              "updated)")
        for name, entry in sections["ood"]["sets"].items():
            msp = entry["metrics"]["msp"]
            print(f"  OOD {name} ({entry['size']} images): MSP AUROC {msp['auroc']:.4f}, FPR95 {msp['fpr95']:.4f}")

    if args.prune_exits is not None:
        pruned = add_pruned(args.run_dir, args.prune_exits, device=args.device)
        print(f"{args.run_dir}: exits pruned at EPS={args.prune_exits:g}: {pruned['cost']['flops'] / 1e6:.2f} M FLOPs, "
              f"test accuracy {pruned['test']['accuracy']:.4f}, NLL {pruned['test']['nll']:.4f} (metrics.json updated)")
    if args.anytime:
        from mimmo.evaluation.anytime import DEFAULT_THRESHOLDS

        table = add_anytime(args.run_dir, args.thresholds or DEFAULT_THRESHOLDS, device=args.device)
        full = table["full"]
        print(f"{args.run_dir}: anytime (full: {full['flops'] / 1e6:.3f} M FLOPs, accuracy {full['accuracy']:.4f})")
        for row in table["thresholds"]:
            print(f"  threshold {row['threshold']:<6g} {row['flops'] / 1e6:8.3f} M FLOPs  accuracy "
                  f"{row['accuracy']:.4f}  NLL {row['nll']:.4f}  ECE {row['ece']:.4f}  "
                  f"{row['seconds_per_image'] * 1e3:.3f} ms/image")


def best_device(name: str = "auto") -> str:
    """``auto``: the first CUDA device where there is one, else the CPU; any other name is checked (a device torch
    knows, a CUDA device this machine has) and kept as given. ValueError naming it otherwise."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"--device {name!r} is not a device name: cpu, cuda, cuda:1, ... or auto") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: this torch {torch.__version__} sees no CUDA device (a CPU-only build, "
                             "or no GPU here); use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return name


def build_parser() -> argparse.ArgumentParser:
    from mimmo import __version__
    from mimmo.cli.help import DEMO_EPILOG, DESCRIPTION, EPILOG, EVALUATE_EPILOG, REPORT_EPILOG

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
    evaluate.add_argument("--anytime", action="store_true",
                          help="only sweep the anytime thresholds (exit methods) into metrics.json's 'anytime' table")
    evaluate.add_argument("--thresholds", type=_thresholds, default=None,
                          help="comma-separated anytime thresholds in [0, 1] (default: 0,0.5,...,0.999,1)")
    evaluate.add_argument("--prune-exits", type=float, default=None, metavar="EPS",
                          help="only evaluate the network with exits whose weight is < EPS dropped ('pruned')")
    evaluate.add_argument("--ood", action="store_true",
                          help="only add OOD detection, selective classification and the uncertainty decomposition "
                               "('ood', 'selective', 'decomposition')")
    calibrate = command("calibrate", "fit a temperature on the validation split of finished runs and add the "
                        "calibrated metrics to their metrics.json")
    calibrate.add_argument("run_dirs", nargs="+")
    calibrate.add_argument("--device", default="auto",
                           help="cpu, cuda, ...; auto (default): cuda where available, else cpu")
    command("cost", "FLOPs and params of one test-time prediction; Hydra overrides follow", add_help=False)
    report = command("report", "tables and figures from saved run folders (never retrains)", REPORT_EPILOG)
    report.add_argument("paths", nargs="+", help="run folders, or folders that contain run folders")
    report.add_argument("--out", default="reports", help="where the tables and figures go (default reports)")
    report.add_argument("--no-figures", action="store_true", help="tables only")
    report.add_argument("--reference", default="mimmo", metavar="METHOD",
                        help="the method every other is compared with in comparison.md (default mimmo)")
    demo = command("demo", "train Base, MIMO and MIMMO (M=2) on the embedded data; print a table", DEMO_EPILOG)
    demo.add_argument("--output-dir", default="runs/demo", help="where the demo's runs go (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=None,
                      help="override the demo preset's 50 epochs (at least 4: MIMMO's warm start takes 3)")
    return parser


def main(argv: list[str] | None = None) -> None:
    from mimmo.runs.console import pop_verbose

    argv = pop_verbose(list(sys.argv[1:] if argv is None else argv))
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ["MIMMO_DEBUG"] = "1"  # also for the processes a DDP launcher starts
    if argv and argv[0] == "grid":
        from mimmo.cli.grid import main as grid_main

        grid_main(argv[1:], train=train_command)
        return
    if argv and argv[0] in ("train", "cost"):
        command, rest = argv[0], argv[1:]
        if command == "train":
            train_command(rest)
        else:
            run_reporting_errors("cost", lambda: cost_command(rest))
        return
    args = build_parser().parse_args(argv)
    if args.command in ("evaluate", "calibrate"):
        args.device = run_reporting_errors(args.command, lambda: best_device(args.device))
    if args.command == "evaluate" and (args.anytime or args.prune_exits is not None or args.ood):
        posthoc_evaluate(args)
    elif args.command == "evaluate":
        from mimmo.runs.console import configure_console, run_summary
        from mimmo.runs.evaluate import evaluate_run

        configure_console()
        print(f"evaluating {args.run_dir} on {args.device}", flush=True)
        results = run_reporting_errors("evaluate", lambda: evaluate_run(args.run_dir, device=args.device))
        print(run_summary(args.run_dir, results) + "\n(metrics.json updated)")
    elif args.command == "report":
        from mimmo.report import report as make_report
        from mimmo.report.runs import ReportWarning

        def make() -> str:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ReportWarning)
                try:
                    return make_report(args.paths, args.out, figures=not args.no_figures, reference=args.reference)
                finally:
                    for warning in caught:
                        if issubclass(warning.category, ReportWarning):
                            print(f"mimmo report: {warning.message}", file=sys.stderr)
                        else:
                            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                                   warning.lineno)

        print(run_reporting_errors("report", make))
    elif args.command == "calibrate":
        from mimmo.runs.posthoc import calibrate_run

        for run_dir in args.run_dirs:
            section = run_reporting_errors(
                "calibrate", lambda run_dir=run_dir: calibrate_run(run_dir, device=args.device))
            fit, test = section["validation"], section["test"]
            print(f"{run_dir}: T = {section['temperature']:.4f}; validation NLL {fit['nll_before']:.4f} -> "
                  f"{fit['nll_after']:.4f}; calibrated test accuracy {test['accuracy']:.4f}, NLL {test['nll']:.4f}, "
                  f"ECE {test['ece']:.4f} (calibration.json written, metrics.json updated)")
    elif args.command == "demo":
        from mimmo.cli.demo import run_demo
        from mimmo.runs.console import configure_console

        configure_console()
        run_reporting_errors("demo", lambda: run_demo(args.output_dir, args.epochs))


if __name__ == "__main__":
    main()
