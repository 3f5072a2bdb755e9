"""Grids on a cluster: finished runs left out of what is submitted, a failed or stopped job in one line, a requeued
job's log in the run folder. The end-to-end tests use Hydra's submitit launcher in local mode and are skipped
where it is not installed (`pip install -e '.[slurm]'`)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
import yaml

from mimmo.cli import grid as grids
from mimmo.config import CONFIG_DIR, compose
from mimmo.runs.folder import LAST_CHECKPOINT, METRICS_FILE

TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4", "data.train_size=128",
        "train.batch_size=32", "train.progress_bar=false", "evaluation.shifted=false", "evaluation.calibrate=false",
        "train.threads=1"]


def write_grid(path: Path, *sweeps: list[str]) -> Path:
    path.write_text(yaml.safe_dump({"description": "a test grid", "sweeps": [list(s) for s in sweeps]}))
    return path


def test_product_blocks_cover_exactly_the_given_runs_once():
    jobs = [(f"a={a}", f"b={b}", "c=x") for a in (1, 2, 3) for b in (0, 1)]
    assert grids.product_blocks(jobs) == [[["a=1", "a=2", "a=3"], ["b=0", "b=1"], ["c=x"]]]
    pending = [job for job in jobs if job not in {("a=1", "b=0", "c=x"), ("a=2", "b=0", "c=x")}]
    blocks = grids.product_blocks(pending)
    assert blocks == [[["a=1", "a=2"], ["b=1"], ["c=x"]], [["a=3"], ["b=0", "b=1"], ["c=x"]]]
    covered = [tuple(job) for block in blocks for job in grids.expand(grids.block_overrides(block))]
    assert sorted(covered) == sorted(pending)  # exactly the pending runs, none twice
    assert grids.block_overrides(blocks[0]) == ["a=1,2", "b=1", "c=x"]


def test_a_restarted_grid_submits_only_its_unfinished_runs(tmp_path):
    runs = tmp_path / "runs"
    path = write_grid(tmp_path / "g.yaml", ["method=base", "seed=0,1,2", *TINY, "train.epochs=1", f"output_dir={runs}"])
    [planned] = grids.plan(grids.load_grid(str(path)))
    planned[1].folder.mkdir(parents=True)
    (planned[1].folder / METRICS_FILE).write_text("{}")  # seed 1 is finished
    submitted: list[list[str]] = []
    lines: list[str] = []
    grids.run_grid(str(path), ["hydra/launcher=joblib"], train=submitted.append, out=lines.append)
    assert [a for a in submitted[0] if a.startswith(("seed=", "hydra/"))] == ["seed=0,2", "hydra/launcher=joblib"]
    assert [tuple(job) for job in grids.expand(submitted[0][1:])] == [planned[0].overrides, planned[2].overrides]
    assert "running sweep 1/1 (its unfinished runs only): mimmo train --multirun method=base seed=0,2" in lines[-2]
    for run in planned:
        (run.folder).mkdir(parents=True, exist_ok=True)
        (run.folder / METRICS_FILE).write_text("{}")
    submitted.clear()
    grids.run_grid(str(path), train=submitted.append, out=lines.append)
    assert submitted == [] and "its 3 runs are finished; nothing to run" in lines[-2]


@pytest.mark.parametrize(("code", "word"), [(143, "stopped (resume by running the grid again)"), (1, "failed")])
def test_a_stopped_sweep_says_so_and_a_failed_one_says_failed(tmp_path, code, word):
    path = write_grid(tmp_path / "g.yaml", ["method=base", *TINY, f"output_dir={tmp_path / 'runs'}"])
    lines: list[str] = []

    def train(arguments: list[str]) -> None:
        raise SystemExit(code)

    with pytest.raises(SystemExit):
        grids.run_grid(str(path), train=train, out=lines.append)
    assert lines[-1].startswith(f"[grid] sweep 1 {word}")


SUBMITIT_ERROR = """Job 4242 (task: 0) with path /runs/.submitit/4242/4242_0_result.pkl
has not produced any output (state: FINISHED)
Error stream produced:
----------------------------------------
  warnings.warn(
mimmo train: stopped by SIGTERM while working on /runs/x (its last epoch is kept): run the same command again
"""


def test_a_jobs_error_becomes_mimmos_line_with_its_log_and_a_signal_stop_its_code():
    message, code = grids.job_failure(SUBMITIT_ERROR)
    assert code == 143
    assert message == ("mimmo train: stopped by SIGTERM while working on /runs/x (its last epoch is kept): run the "
                       "same command again (its log: /runs/.submitit/4242/4242_0_log.err)")
    failed = "Job (task=0) failed during processing with trace:\n-----\nValueError: bad\n-----\nor at paths:\n" \
             "  - /r/.submitit/7/7_0_log.err\n  - /r/.submitit/7/7_0_log.out"
    assert grids.job_failure(failed) == ("ValueError: bad (its log: /r/.submitit/7/7_0_log.err)", 1)
    timed_out = failed.replace("ValueError: bad", "submitit.core.utils.UncompletedJobError: Job not requeued "
                               "because: timed-out too many times.")
    assert grids.job_failure(timed_out)[1] == 143  # a time limit stops the job; the next grid resumes it


def test_the_log_file_keeps_its_name_after_hydra_state_says_app():
    """A requeued job rebuilds its config with the Hydra state its first process pickled, in which mimmo's own
    config composition had set the job name to "app": the log then went to app.log beside cli.log."""
    compose([])  # Hydra's compose API names its job "app"
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="app"):
        cfg = hydra.compose(config_name="config", return_hydra_config=True)
    assert cfg.hydra.job.name == "cli"


def test_a_malformed_grid_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sweeps:\n  - [method=base, model.layers=[1,1,1,1]]\n")
    with pytest.raises(ValueError, match=r"grid file .*bad.yaml is not readable YAML .*quote an override"):
        grids.load_grid(str(path))


# --- Hydra's submitit launcher, local mode --------------------------------------------------------------------

needs_submitit = pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                                    reason="Hydra's submitit launcher is not installed (pip install -e '.[slurm]')")


def run_grid_process(path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "mimmo.cli", "grid", str(path), "hydra/launcher=submitit_local",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def job_task(submitit_dir: Path) -> int:
    """The process id of the (single) task of the local job whose folder is under ``submitit_dir``."""
    [job] = [p for p in submitit_dir.iterdir() if p.name.isdigit()]
    children = Path(f"/proc/{job.name}/task/{job.name}/children").read_text().split()
    return int(children[0])


@needs_submitit
def test_a_failed_job_in_mimmo_train_multirun_is_one_line_too(monkeypatch, capsys):
    from hydra.core.plugins import Plugins
    from submitit.core.utils import UncompletedJobError

    Plugins.instance()  # Hydra's plugin scan imports the launcher module anew: take the class it will use
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    from mimmo.cli import train_command

    def launch(self, job_overrides, initial_job_idx):
        raise UncompletedJobError(SUBMITIT_ERROR)

    monkeypatch.setattr(BaseSubmititLauncher, "launch", launch)
    monkeypatch.setattr("mimmo.cli._train_main", lambda: BaseSubmititLauncher.launch(None, [], 0))
    monkeypatch.setattr("mimmo.cli.check_data_before_start", lambda overrides: None)
    with pytest.raises(SystemExit) as exited:
        train_command(["--multirun", "method=base", "seed=0,1"])
    assert exited.value.code == 143
    assert capsys.readouterr().err == ("mimmo train: a job was stopped: mimmo train: stopped by SIGTERM while working "
                                       "on /runs/x (its last epoch is kept): run the same command again (its log: "
                                       "/runs/.submitit/4242/4242_0_log.err)\n")
    assert BaseSubmititLauncher.launch is launch  # put back


@needs_submitit
def test_submitit_skips_finished_runs_and_a_requeued_job_resumes_with_its_log_in_place(tmp_path):
    runs = tmp_path / "runs"
    path = write_grid(tmp_path / "g.yaml", ["method=base", "seed=0,1", *TINY, "train.epochs=60", f"output_dir={runs}"])
    finished, pending = (run.folder for run in grids.plan(grids.load_grid(str(path)))[0])
    finished.mkdir(parents=True)
    (finished / METRICS_FILE).write_text("{}")
    process = run_grid_process(path)
    deadline = time.time() + 300
    while not (pending / LAST_CHECKPOINT).exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.kill(job_task(runs / ".submitit"), signal.SIGUSR2)  # what SLURM sends before a time limit: requeue
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "#1 :" not in output and "seed=1" in output.split("#0 :")[1].splitlines()[0]  # one job: seed 1
    assert (finished / METRICS_FILE).read_text() == "{}"
    assert json.loads((pending / METRICS_FILE).read_text())["seed"] == 1
    assert sorted(p.name for p in pending.glob("*.log")) == ["cli.log"]
    assert "resuming from" in (pending / "cli.log").read_text()


@needs_submitit
def test_a_failed_submitit_job_is_one_line_with_its_log(tmp_path):
    runs = tmp_path / "runs"
    path = write_grid(tmp_path / "g.yaml", ["method=base", *TINY, "train.epochs=1", "train.lr=1e30",
                                            f"output_dir={runs}"])
    process = run_grid_process(path)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1
    assert "Traceback" not in output and "UncompletedJobError" not in output
    [line] = [line for line in output.splitlines() if line.startswith("[grid] a job failed: mimmo train: ")]
    log = Path(line.rsplit("(its log: ", 1)[1].rstrip(")"))
    assert log.is_file() and log.is_relative_to(runs / ".submitit")
    assert output.splitlines()[-1].startswith("[grid] sweep 1 failed")


def test_a_boolean_names_one_folder_however_it_is_spelt_and_old_folders_are_still_found(tmp_path):
    """`evaluation.shifted=false` on the command line and `False` from a sweep (Hydra's spelling) are one run."""
    from mimmo.config import run_name

    path = write_grid(tmp_path / "g.yaml", ["method=base", "seed=0,1", "evaluation.shifted=false",
                                            f"output_dir={tmp_path}"])
    [planned] = grids.plan(grids.load_grid(str(path)))
    assert "evaluation.shifted=False" in planned[0].overrides  # what the sweeper passes
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra.compose(config_name="config", return_hydra_config=True,
                            overrides=["method=base", "seed=0", "evaluation.shifted=false", f"output_dir={tmp_path}"])
    with grids._hydra_config(cfg):
        single = Path(str(cfg.hydra.run.dir))
    assert single == planned[0].folder and single.name == "evaluation.shifted=false,method=base,seed=0"
    (tmp_path / "evaluation.shifted=False,method=base,seed=1").mkdir()  # named by an earlier version
    assert run_name("evaluation.shifted=False,method=base,seed=1", str(tmp_path)) == \
        "evaluation.shifted=False,method=base,seed=1"
    assert run_name("evaluation.shifted=FALSE,method=base,seed=2", str(tmp_path)) == \
        "evaluation.shifted=false,method=base,seed=2"
