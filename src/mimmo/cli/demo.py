"""``mimmo demo``: Base, MIMO (M=2) and MIMMO (M=2) on the embedded data with the demo preset, one table.

The preset (configs/experiment/demo.yaml) is the clean miniature regime of the paper's recipe, long enough
for the three methods to converge: a demo that stops earlier shows an under-trained MIMMO, not the method.

Each configuration trains into its own folder, named after the method, the epochs and a hash of everything
that changes the result, so that a demo with other ``--epochs`` (or after a preset changed) never meets a
run of another configuration; a finished run is reused and its time shows as "reused".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from omegaconf import DictConfig

from mimmo.cli.main import summary
from mimmo.config import compose
from mimmo.report.convergence import loss_fall_share
from mimmo.report.runs import Run
from mimmo.runs.console import format_duration
from mimmo.runs.folder import METRICS_FILE, semantic_config
from mimmo.runs.train import train
from mimmo.training.build import prepare_run

DEMO_METHODS = ("base", "mimo", "mimmo")


def run_folder_name(cfg: DictConfig) -> str:
    """``base_epochs=5_1a2b3c4d``: readable, and unique per configuration (the hash covers every setting that
    changes what the run computes, :func:`mimmo.runs.folder.semantic_config`)."""
    digest = hashlib.sha256(json.dumps(semantic_config(cfg), sort_keys=True, default=str).encode()).hexdigest()
    return f"{cfg.method.name}_epochs={cfg.train.epochs}_{digest[:8]}"


def format_table(rows: list[dict]) -> str:
    """The demo's table; ``rows`` hold a run's metrics plus ``seconds`` (this call's wall time, None for a run
    that was finished before and reused)."""
    header = ("| method | M | D | epochs | accuracy | NLL | ECE | acc − conf | shifted acc | shifted NLL "
              "| OOD AUROC (MSP) | FLOPs [M] | params [M] | time |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [header]
    for r in rows:
        t = r["test"]
        time_text = "reused" if r["seconds"] is None else format_duration(r["seconds"])
        lines.append(f"| {r['method']} | {r['num_members']} | {r['num_exits']} | {r['config']['train']['epochs']} "
                     f"| {t['accuracy']:.3f} | {t['nll']:.3f} | {t['ece']:.3f} "
                     f"| {_number(t.get('accuracy_minus_confidence'), '+.3f')} "
                     f"| {_number(_shifted(r, 'accuracy'), '.3f')} | {_number(_shifted(r, 'nll'), '.3f')} "
                     f"| {_number(ood_auroc(r), '.3f')} "
                     f"| {r['cost']['flops'] / 1e6:.2f} | {r['cost']['params'] / 1e6:.3f} | {time_text} |")
    return "\n".join(lines)


def _shifted(row: dict, key: str) -> float | None:
    return ((row.get("shifted") or {}).get("summary") or {}).get(key, {}).get("mean")


def ood_auroc(row: dict, score: str = "msp") -> float | None:
    """The mean over a run's OOD sets (the noise sets in the demo) of ``score``'s AUROC (None without them)."""
    sets = (row.get("ood") or {}).get("sets") or {}
    values = [entry["metrics"][score]["auroc"] for entry in sets.values() if score in entry["metrics"]]
    return sum(values) / len(values) if values else None


def _number(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def still_training(rows: list[dict], threshold: float = 0.03) -> str | None:
    """A line naming the methods whose training objective had not flattened: over the last 10% of the epochs
    (at least one) it still fell by more than ``threshold`` of its whole fall from the first epoch (None when
    every run has flattened, or no run has a log). Their numbers are not those of a trained model."""
    falling = []
    for row in rows:
        if row.get("run_dir") is None:
            continue
        run = Run(Path(row["run_dir"]), row, row.get("config", {}))
        share = loss_fall_share(run)
        if share is not None and share > threshold:
            falling.append(f"{row['method']} {share:.0%}")
    if not falling:
        return None
    return (f"Still training: in the last 10% of the epochs the training objective still made {', '.join(falling)} "
            "of its whole fall, so these runs are not converged; `mimmo demo --epochs N` trains longer (into new "
            "folders).")


def findings(rows: list[dict]) -> list[str]:
    """Lines under the table on what its numbers show: the clean test set (who is most accurate, whose
    predictions are under- or over-confident), the 25 shifted sets (whose NLL holds up best) and, where a run's
    training objective was still falling, that it is not converged."""
    by_name = {r["method"]: r for r in rows}
    lines = []
    best, lowest_nll = (max(rows, key=lambda r: r["test"]["accuracy"]), min(rows, key=lambda r: r["test"]["nll"]))
    gaps = {r["method"]: r["test"].get("accuracy_minus_confidence") for r in rows}
    line = (f"Clean test set: {best['method']} is the most accurate ({best['test']['accuracy']:.3f}) and "
            + ("has" if lowest_nll is best else f"{lowest_nll['method']} has")
            + f" the lowest NLL ({lowest_nll['test']['nll']:.3f})")
    if all(gap is not None for gap in gaps.values()):
        line += "; accuracy − confidence " + ", ".join(f"{name} {gap:+.3f}" for name, gap in gaps.items())
        mixtures = [r["method"] for r in rows if r["num_members"] * r["num_exits"] > 1 and gaps[r["method"]] > 0.02]
        verb = "averages" if len(mixtures) == 1 else "average"
        line += (f" (> 0: under-confident; {' and '.join(mixtures)} {verb} several predictions, and the average's "
                 "top probability is lower than its accuracy)" if mixtures else " (> 0: under-confident)")
    lines.append(line + ".")
    shifted = {name: _shifted(r, "nll") for name, r in by_name.items()}
    if all(value is not None for value in shifted.values()):
        most_robust = min(shifted, key=shifted.get)
        lines.append("Under the 25 shifts (mean): NLL " + ", ".join(f"{n} {v:.2f}" for n, v in shifted.items())
                     + f"; {most_robust} holds up best. Where one network overfits (a regime with label noise), "
                     "see docs/results.md in the repository.")
    training = still_training(rows)
    if training:
        lines.append(training)
    return lines


def run_demo(output_dir: str | Path = "runs/demo", epochs: int | None = None, seed: int = 0,
             extra_overrides: list[str] | None = None) -> str:
    """Train the demo's three methods into ``output_dir`` (one folder per configuration) and return (and
    print) the table."""
    configs = []
    for name in DEMO_METHODS:
        overrides = ["experiment=demo", f"method={name}", f"seed={seed}", *(extra_overrides or [])]
        if epochs is not None:
            overrides.append(f"train.epochs={epochs}")
        configs.append(compose(overrides))
        try:
            prepare_run(configs[-1])  # every run is checked before the first one trains
        except ValueError as error:
            raise ValueError(f"the demo's {name} run: {error}") from error
    rows = []
    for index, (name, cfg) in enumerate(zip(DEMO_METHODS, configs, strict=True), start=1):
        run_dir = Path(output_dir) / run_folder_name(cfg)
        finished = (run_dir / METRICS_FILE).exists()
        print(f"[demo {index}/{len(DEMO_METHODS)}] {name}: "
              + ("finished before, reused" if finished else f"training {cfg.train.epochs} epochs")
              + f" ({run_dir})", flush=True)
        start = time.perf_counter()
        metrics = train(cfg, run_dir)
        rows.append({**metrics, "seconds": None if finished else time.perf_counter() - start, "run_dir": run_dir})
    table = format_table(rows)
    notes = "\n".join(findings(rows))
    print(f"\nTest set of the embedded data (animal-shape-mnist), runs in {output_dir}:\n\n{table}\n\n{notes}",
          flush=True)
    return table + "\n\n" + notes


SUMMARY = summary("demo")

DEMO_EPILOG = """\
Trains with the demo preset (experiment=demo: 250 training images, batch 16, 50 epochs, seed 0, the paper's
recipe; long enough for MIMMO's exit weights to settle) into one folder per configuration under
--output-dir, so that runs with other --epochs never collide; a finished run is reused (its time shows as
"reused"). Under the table, lines on what it shows, and one naming any run whose training was still falling.

examples:
  mimmo demo
  mimmo demo --epochs 100 --output-dir /tmp/demo"""


def parser() -> argparse.ArgumentParser:
    demo = argparse.ArgumentParser(prog="mimmo demo", description=SUMMARY, epilog=DEMO_EPILOG, add_help=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--output-dir", default="runs/demo", help="where the demo's runs go (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=None,
                      help="override the demo preset's 50 epochs (at least 4: MIMMO's warm start takes 3)")
    return demo


def help_text() -> str:
    return parser().format_help()


def main(arguments: list[str]) -> None:
    from mimmo.cli.errors import run_reporting_errors
    from mimmo.runs.console import configure_console

    args = parser().parse_args(arguments)
    configure_console()
    run_reporting_errors("demo", lambda: run_demo(args.output_dir, args.epochs))
