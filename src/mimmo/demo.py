"""``mimmo demo``: Base, MIMO (M=2) and MIMMO (M=2) on the embedded data with the fast preset, one table."""

from __future__ import annotations

import time
from pathlib import Path

from mimmo.config import compose
from mimmo.training import prepare_run, train

DEMO_METHODS = ("base", "mimo", "mimmo")


def format_table(rows: list[dict]) -> str:
    header = ("| method | M | D | accuracy | NLL | ECE | Brier ×10³ | FLOPs [M] | params [M] | time [s] |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [header]
    for r in rows:
        t = r["test"]
        lines.append(f"| {r['method']} | {r['num_members']} | {r['num_exits']} | {t['accuracy']:.3f} | {t['nll']:.3f} "
                     f"| {t['ece']:.3f} | {t['brier'] * 1e3:.2f} | {r['cost']['flops'] / 1e6:.2f} "
                     f"| {r['cost']['params'] / 1e6:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def run_demo(output_dir: str | Path = "runs/demo", epochs: int | None = None, seed: int = 0,
             extra_overrides: list[str] | None = None) -> str:
    """Train the demo's three methods into ``output_dir`` and return (and print) the table."""
    configs = {}
    for name in DEMO_METHODS:
        overrides = ["experiment=fast", f"method={name}", f"seed={seed}", "train.progress_bar=false",
                     *(extra_overrides or [])]
        if epochs is not None:
            overrides.append(f"train.epochs={epochs}")
        configs[name] = cfg = compose(overrides)
        try:
            prepare_run(cfg)  # every run is checked before the first one trains
        except ValueError as error:
            raise ValueError(f"the demo's {name} run: {error}") from error
    rows = []
    for name, cfg in configs.items():
        print(f"[demo] training {name} ({cfg.train.epochs} epochs) ...", flush=True)
        start = time.perf_counter()
        metrics = train(cfg, Path(output_dir) / name)
        rows.append({**metrics, "seconds": time.perf_counter() - start})
    table = format_table(rows)
    print(f"\nTest set of the embedded data (animal-shape-mnist), runs in {output_dir}:\n\n{table}")
    return table
