"""The GPU checks in one run that fits 7 minutes of a fresh GPU machine, numbers saved after every part.

Parts, in this order, each cut at its limit and at the deadline (``--deadline`` seconds from the start); the JSON
(``OUT/gpu-epoch-times.json``) is rewritten after every part and every method, so a cut-off run keeps its numbers:

1. ``graph_check``: ``benchmarks/graph_check.py``, one process per method (``--parallel`` at a time): pass/fail
   from the first ten steps' losses against eager steps, and the capture/replay counts; one run with a capture
   failure injected (the fallback on a real device); next to them, the compile check of MIMMO.
2. ``epoch_times``: ``benchmarks/epoch_time.py`` for MIMO and MIMMO (the two target numbers), then MixMo and Base,
   each graphed and eager (one process per method).
3. ``estimate``: the ``paper_tables`` grid's hours from what was measured (methods not measured take a measured
   method's epoch, listed in ``estimate_proxies``).
4. ``more_epoch_times``: the other methods, graphed only, while time remains (the estimate is then redone).
5. ``aggregate``: four concurrent MIMO runs against one (the joblib launcher's situation), last.

``--dry`` runs the same logic on a CPU in seconds per part: tiny network, a stand-in graph backend for the graph
check, no compile check, few methods (``tests/test_benchmarks.py`` runs it).

    python benchmarks/gpu_check.py --out OUT [--deadline 400] [--dry]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import epoch_time

HERE = Path(__file__).parent
RESULT_FILE = "gpu-epoch-times.json"
TARGETS = {"mimo_epoch_seconds": 3.0, "mimmo_epoch_seconds": 4.0, "speedup_over_eager": 2.5,
           "paper_tables_hours": 4.0}
FIRST, SECOND = ["mimo", "mimmo"], ["mixmo", "base"]
TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4", "evaluation.shifted=false"]


class Budget:
    """Seconds left before the deadline; a part's limit is the smaller of its own and what is left."""

    def __init__(self, deadline: float) -> None:
        self.start, self.deadline = time.monotonic(), deadline

    def left(self) -> float:
        return self.deadline - (time.monotonic() - self.start)

    def limit(self, own: float) -> float:
        return min(own, self.left())


def run_process(command: list[str], limit: float, log: Path) -> int | None:
    """Run ``command`` with its output appended to ``log``; its exit status, or None when cut at ``limit``."""
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        try:
            return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=max(limit, 0.1),
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=HERE.parent).returncode
        except subprocess.TimeoutExpired:
            handle.write(f"(cut after {limit:.0f} s)\n")
            return None


class Check:
    """The whole run: its parts, its budget and its JSON."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.budget = args, Budget(args.deadline)
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "log-parts.txt"  # the output of every process it starts
        self.result: dict[str, Any] = {"dry": args.dry, "deadline_seconds": args.deadline, "parts": {},
                                       "graph_check": {}, "methods": {}}

    def save(self) -> None:
        temporary = self.out / f".{RESULT_FILE}.tmp"
        temporary.write_text(json.dumps(self.result, indent=1))
        os.replace(temporary, self.out / RESULT_FILE)

    def part(self, name: str, own_limit: float, body) -> None:
        """Run one part (``body(limit)``) if at least 10 s are left; record its status and time; save."""
        limit = self.budget.limit(own_limit)
        if limit < 10:
            self.result["parts"][name] = {"status": "skipped: no time left"}
        else:
            start = time.monotonic()
            try:
                status = body(limit)
            except Exception as error:  # recorded; the next parts still run
                status = f"failed: {type(error).__name__}: {error}"
            self.result["parts"][name] = {"status": status, "seconds": round(time.monotonic() - start, 1)}
        print(f"== {name}: {self.result['parts'][name]}", flush=True)
        self.save()

    def python(self, script: str, *arguments: str) -> list[str]:
        return [sys.executable, str(HERE / script), *arguments]

    # ------------------------------------------------------------------------------------------------------ parts

    def graph_check(self, limit: float) -> str:
        args, deadline = self.args, time.monotonic() + limit
        jobs = [(method, []) for method in args.graph_methods]
        jobs.append((f"{args.inject_method}+injected-failure", ["--inject-failure"]))
        if not args.dry:
            jobs.insert(0, ("mimmo+compile", ["--compile"]))  # the longest: started first, beside the others

        def one(job: tuple[str, list[str]]) -> None:
            name, flags = job
            path = self.out / f"graph-check-{name}.json"
            method = name.split("+")[0]
            code = run_process(self.python("graph_check.py", "--method", method, "--out", str(path), *flags,
                                           *(["--dry"] if args.dry else [])),
                               deadline - time.monotonic(), self.log)
            if code is None:
                entry = {"passed": False, "why": "cut at the part's time limit"}
            elif path.is_file():
                full = json.loads(path.read_text())
                entry = {key: full[key] for key in ("passed", "why")}
                checked = full.get("checked", {})
                entry |= {"cuda_graphs": checked.get("cuda_graphs"), "seconds": checked.get("seconds")}
            else:
                entry = {"passed": False, "why": f"exit status {code}, no result (see log-parts.txt)"}
            self.result["graph_check"][name] = entry
            self.save()

        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(one, jobs))
        passed = sum(entry["passed"] for entry in self.result["graph_check"].values())
        self.result["graph_check_passed"] = passed == len(jobs)
        return f"{passed} of {len(jobs)} passed"

    def epoch_times(self, methods: list[str], eager: bool, own_limit: float):
        def body(limit: float) -> str:
            deadline, done = time.monotonic() + limit, []
            for method in methods:
                left = deadline - time.monotonic()
                if left < 10:
                    break
                path = self.out / f"epoch-time-{method}.json"
                arguments = ["--methods", method, "--epochs", str(self.args.epochs), "--train-size",
                             str(self.args.train_size), "--test-size", str(self.args.test_size), "--out", str(path),
                             *(["--eager"] if eager else []), *(["--embedded"] if self.args.dry else []),
                             "--extra", *self.extra()]
                code = run_process(self.python("epoch_time.py", *arguments), min(left, self.args.method_limit),
                                   self.log)
                if path.is_file() and method in (measured := json.loads(path.read_text())["methods"]):
                    self.result["methods"][method] = measured[method]
                    done.append(method)
                else:
                    self.result["methods"][method] = {"error": "cut at its time limit" if code is None else
                                                      f"exit status {code} (see log-parts.txt)"}
                self.save()
            return f"measured {done}"
        return body

    def estimate(self, limit: float) -> str:
        measured = {m: e for m, e in self.result["methods"].items() if "epoch_seconds" in e}
        if not measured:
            return "nothing measured"
        hours, proxies = epoch_time.paper_tables_estimate(measured, self.args.test_size)
        self.result["paper_tables_hours_estimate"], self.result["estimate_proxies"] = hours, proxies
        self.result["targets"] = self.targets()
        return f"{hours:.2f} h"

    def aggregate(self, limit: float) -> str:
        path = self.out / "aggregate.json"
        arguments = ["--methods", "none", "--aggregate", "4", "--aggregate-epochs", "2", "--train-size",
                     str(self.args.train_size), "--test-size", str(self.args.test_size), "--out", str(path),
                     *(["--embedded"] if self.args.dry else []), "--extra", *self.extra()]
        code = run_process(self.python("epoch_time.py", *arguments), limit, self.log)
        if not path.is_file():
            return "cut at its time limit" if code is None else f"exit status {code}"
        self.result["aggregate"] = json.loads(path.read_text()).get("aggregate")
        return "done"

    # -------------------------------------------------------------------------------------------------- helpers

    def extra(self) -> list[str]:
        return [*(TINY if self.args.dry else []), *self.args.extra]

    def targets(self) -> dict[str, Any]:
        """The GPU-speed issue's targets against what was measured (None where not measured)."""
        methods = self.result["methods"]

        def epoch(method: str) -> float | None:
            return methods.get(method, {}).get("epoch_seconds")

        speedups = [e["speedup_over_eager"] for e in methods.values() if "speedup_over_eager" in e]
        hours = self.result.get("paper_tables_hours_estimate")
        return {"mimo_epoch_seconds <= 3.0": None if epoch("mimo") is None else epoch("mimo") <= 3.0,
                "mimmo_epoch_seconds <= 4.0": None if epoch("mimmo") is None else epoch("mimmo") <= 4.0,
                "every speedup_over_eager >= 2.5": min(speedups) >= 2.5 if speedups else None,
                "paper_tables_hours <= 4": None if hours is None else hours <= 4.0}

    def run(self) -> dict[str, Any]:
        import torch

        self.result |= {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                        "torch": torch.__version__}
        self.save()
        args = self.args
        self.part("graph_check", args.graph_limit, self.graph_check)
        self.part("epoch_times", args.epoch_limit, self.epoch_times(FIRST + SECOND if not args.dry else
                                                                    args.time_methods, True, args.epoch_limit))
        self.part("estimate", 60, self.estimate)
        rest = [m for m in epoch_time.ALL_METHODS if m not in self.result["methods"]] if not args.dry else []
        if rest:
            self.part("more_epoch_times", self.budget.left() - args.aggregate_limit,
                      self.epoch_times(rest, False, self.budget.left() - args.aggregate_limit))
            self.part("estimate_again", 60, self.estimate)
        if args.aggregate_limit > 0:
            self.part("aggregate", args.aggregate_limit, self.aggregate)
        self.result["seconds"] = round(time.monotonic() - self.budget.start, 1)
        self.save()
        return self.result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline", type=float, default=None, help="seconds for the whole run (default 400: a "
                        "GPU check gets 7 minutes of a fresh machine, and the import check before this script some; "
                        "900 with --dry, for a slow CPU)")
    parser.add_argument("--dry", action="store_true", help="the logic on a CPU: tiny, stand-in graphs, no compile")
    parser.add_argument("--parallel", type=int, default=4, help="graph-check processes at a time")
    parser.add_argument("--train-size", type=int, default=9000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--graph-limit", type=float, default=None, help="default 120 s (400 with --dry)")
    parser.add_argument("--epoch-limit", type=float, default=None, help="default 170 s (300 with --dry)")
    parser.add_argument("--method-limit", type=float, default=60, help="seconds for one method's epoch times")
    parser.add_argument("--aggregate-limit", type=float, default=70, help="0: no aggregate part")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    args = parser.parse_args(argv)
    args.graph_methods = ["mimo"] if args.dry else epoch_time.ALL_METHODS
    # Dropout draws from the generator a failed capture can leave in capture mode; on a CPU MC Dropout's evaluation
    # (many samples) is slow, and MixMo's mixing draws from it too.
    args.inject_method = "mixmo" if args.dry else "mc_dropout"
    args.time_methods = ["mimo"]
    if args.dry:
        args.train_size, args.test_size, args.epochs, args.parallel, args.method_limit = 128, 100, 2, 2, 300
    defaults = (900, 400, 300) if args.dry else (400, 120, 170)
    for name, default in zip(("deadline", "graph_limit", "epoch_limit"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return Check(parse(argv)).run()


if __name__ == "__main__":
    main()
