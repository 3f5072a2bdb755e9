"""On a GPU: the graphed training step against eager steps, and train.compile, through `mimmo train`'s path.

For each method, two short runs on CIFAR-100-shaped random data (written in the standard pickle format): one
with the default step (replayed as a CUDA graph on a GPU) and one with `train.cuda_graphs=false`, both with the
learning rate held in a tensor (the graphed step's optimiser numerics; a float rounds differently and Adam
amplifies such differences over a run). It records the largest weight difference and both runs' test metrics.
`--compile` instead trains each method with `train.compile=true` and records whether it finished and its time.
On a CPU nothing is graphed: the script then only checks its own logic. Not a test; JSON to --out.

    python benchmarks/graph_check.py --out graph-check.json [--methods mimmo,mixmo,mc_dropout] [--compile]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from epoch_time import write_cifar100
from safetensors.torch import load_file


def run(method: str, root: Path, run_dir: Path, overrides: list[str], tensor_lr: bool) -> dict[str, Any]:
    from mimmo import training
    from mimmo.config import compose
    from mimmo.training.step import prepare_optimizer

    original = training.module.prepare_optimizer
    if tensor_lr:
        training.module.prepare_optimizer = lambda optimizer, graphs, device: prepare_optimizer(optimizer, True, device)
    try:
        start = time.perf_counter()
        cfg = compose(["experiment=paper", "data=cifar100", f"data.root={root}", f"method={method}",
                       "train.progress_bar=false", "evaluation.shifted=false", *overrides])
        metrics = training.train(cfg, run_dir)
        return {"seconds": time.perf_counter() - start, "test": {k: metrics["test"][k] for k in ("accuracy", "nll")}}
    finally:
        training.module.prepare_optimizer = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="mimmo,mixmo,mc_dropout")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mimmo-graph-check-"))
    write_cifar100(work / "data", num_train=args.train_size * 10 // 9 + 64, num_test=1000)
    common = [f"train.epochs={args.epochs}", f"data.train_size={args.train_size}", "train.warm_start_epochs=1",
              *args.extra]
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                              "torch": torch.__version__, "compile": args.compile, "methods": {}}
    for method in args.methods.split(","):
        entry: dict[str, Any] = {}
        try:
            if args.compile:
                entry["compiled"] = run(method, work / "data", work / f"{method}-compiled",
                                        [*common, "train.compile=true"], tensor_lr=False)
            else:
                entry["graphed"] = run(method, work / "data", work / f"{method}-graphed", common, tensor_lr=True)
                entry["eager"] = run(method, work / "data", work / f"{method}-eager",
                                     [*common, "train.cuda_graphs=false"], tensor_lr=True)
                graphed = load_file(str(work / f"{method}-graphed" / "weights.safetensors"))
                eager = load_file(str(work / f"{method}-eager" / "weights.safetensors"))
                entry["max_weight_difference"] = max(
                    float((graphed[k].float() - eager[k].float()).abs().max()) for k in graphed)
        except Exception:  # a check that fails is a result: record it and go on with the next method
            entry["error"] = traceback.format_exc()[-3000:]
        result["methods"][method] = entry
        print(method, json.dumps(entry)[:1000], flush=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
