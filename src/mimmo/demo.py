"""``mimmo demo``: Base, MIMO (M=2) and MIMMO (M=2) on the embedded data with the fast preset, one table.

Each configuration trains into its own folder, named after the method, the epochs and a hash of everything
that changes the result, so that a demo with other ``--epochs`` (or after a preset changed) never meets a
run of another configuration; a finished run is reused and its time shows as "reused".
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from omegaconf import DictConfig

from mimmo.config import compose
from mimmo.console import format_duration
from mimmo.run_folder import METRICS_FILE
from mimmo.training import prepare_run, semantic_config, train

DEMO_METHODS = ("base", "mimo", "mimmo")


def run_folder_name(cfg: DictConfig) -> str:
    """``base_epochs=5_1a2b3c4d``: readable, and unique per configuration (the hash covers every setting that
    changes what the run computes, :func:`mimmo.training.semantic_config`)."""
    digest = hashlib.sha256(json.dumps(semantic_config(cfg), sort_keys=True, default=str).encode()).hexdigest()
    return f"{cfg.method.name}_epochs={cfg.train.epochs}_{digest[:8]}"


def format_table(rows: list[dict]) -> str:
    """The demo's table; ``rows`` hold a run's metrics plus ``seconds`` (this call's wall time, None for a run
    that was finished before and reused)."""
    header = ("| method | M | D | epochs | accuracy | NLL | ECE | Brier ×10³ | FLOPs [M] | params [M] | time |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [header]
    for r in rows:
        t = r["test"]
        time_text = "reused" if r["seconds"] is None else format_duration(r["seconds"])
        lines.append(f"| {r['method']} | {r['num_members']} | {r['num_exits']} | {r['config']['train']['epochs']} "
                     f"| {t['accuracy']:.3f} | {t['nll']:.3f} | {t['ece']:.3f} | {t['brier'] * 1e3:.2f} "
                     f"| {r['cost']['flops'] / 1e6:.2f} | {r['cost']['params'] / 1e6:.3f} | {time_text} |")
    return "\n".join(lines)


def run_demo(output_dir: str | Path = "runs/demo", epochs: int | None = None, seed: int = 0,
             extra_overrides: list[str] | None = None) -> str:
    """Train the demo's three methods into ``output_dir`` (one folder per configuration) and return (and
    print) the table."""
    configs = []
    for name in DEMO_METHODS:
        overrides = ["experiment=fast", f"method={name}", f"seed={seed}", *(extra_overrides or [])]
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
        rows.append({**metrics, "seconds": None if finished else time.perf_counter() - start})
    table = format_table(rows)
    print(f"\nTest set of the embedded data (animal-shape-mnist), runs in {output_dir}:\n\n{table}", flush=True)
    return table
