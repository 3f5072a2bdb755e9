"""``mimmo evaluate RUN_DIR``: evaluate a finished run again, or add its post-hoc sections (``--anytime``,
``--prune-exits``)."""

from __future__ import annotations

import argparse

from mimmo.cli.device import best_device
from mimmo.cli.errors import run_reporting_errors
from mimmo.cli.main import summary

SUMMARY = summary("evaluate")

EVALUATE_EPILOG = """\
The run folder's metrics.json is rewritten (its training time and exit-weight history are kept). --anytime,
--prune-exits and --ood only add their sections ('anytime', 'pruned'; 'ood', 'selective', 'decomposition').

example:
  mimmo evaluate runs/method=mimmo,seed=1 --device cpu"""


def _thresholds(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"thresholds are comma-separated numbers in [0, 1], got {text!r}") from error


def parser() -> argparse.ArgumentParser:
    evaluate = argparse.ArgumentParser(prog="mimmo evaluate", description=SUMMARY, epilog=EVALUATE_EPILOG,
                                       formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
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
    return evaluate


def help_text() -> str:
    return parser().format_help()


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


def main(arguments: list[str]) -> None:
    from mimmo.runs.console import configure_console, run_summary
    from mimmo.runs.evaluate import evaluate_run

    args = parser().parse_args(arguments)
    args.device = run_reporting_errors("evaluate", lambda: best_device(args.device))
    if args.anytime or args.prune_exits is not None or args.ood:
        posthoc_evaluate(args)
        return
    configure_console()
    print(f"evaluating {args.run_dir} on {args.device}", flush=True)
    results = run_reporting_errors("evaluate", lambda: evaluate_run(args.run_dir, device=args.device))
    print(run_summary(args.run_dir, results) + "\n(metrics.json updated)")
