"""The run-folder contract and the faults around it: locks, signals, safe loading, folder names, refusals."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from tiny_runs import TINY, tiny

from mimmo import config, training
from mimmo.cli import compose, main
from mimmo.cli.grid import compose_run
from mimmo.report.runs import IGNORED_SETTINGS, load_runs
from mimmo.runs import evaluate as runs_evaluate
from mimmo.runs import folder as run_folder
from mimmo.runs.folder import MAX_NAME_BYTES, NON_SEMANTIC_KEYS, RunFolderBusy, lock, run_name
from mimmo.training import train

SRC = str(Path(__file__).resolve().parents[1] / "src")


def python(code: str, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """A Python process running ``code`` with this checkout's sources first on the path."""
    environment = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def results(metrics: dict) -> str:
    keys = ("test", "validation", "cost", "exit_weights", "exit_weights_history")
    return json.dumps({key: metrics[key] for key in keys}, sort_keys=True)


# ----------------------------------------------------------------------------------------------- locking


HOLD_LOCK = """
    import sys, time
    from mimmo.runs.folder import lock
    with lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
"""


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path):
    holder = python(HOLD_LOCK, str(tmp_path / "run"))
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        with pytest.raises(RunFolderBusy, match=rf"in use by process {holder.pid} on host {socket.gethostname()}"):
            with lock(tmp_path / "run"):
                pass
        assert time.perf_counter() - start < 1.0
    finally:
        holder.kill()
        holder.wait()
    with lock(tmp_path / "run"):  # the system released the dead holder's lock
        pass


def test_mimmo_train_refuses_a_folder_another_process_trains_in(tmp_path, capsys):
    folder = tmp_path / "busy"
    holder = python(HOLD_LOCK, str(folder))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *TINY, f"hydra.run.dir={folder}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid} on host {socket.gethostname()}" in err
        assert "Traceback" not in err
        with pytest.raises(RunFolderBusy, match=str(holder.pid)):
            training.evaluate_run(folder)
    finally:
        holder.kill()
        holder.wait()
    assert not (folder / "config.yaml").exists() and not (folder / ".hydra").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"pid {dead.pid} host {socket.gethostname()}\n")
    with lock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[1] == str(os.getpid())
    assert f"taking over the stale lock of {tmp_path.resolve()} (process {dead.pid}" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()


def test_temporary_names_differ_between_processes(tmp_path):
    ours = run_folder.temporary_name(tmp_path / "metrics.json")
    other = python("import sys; from mimmo.runs.folder import temporary_name; print(temporary_name(sys.argv[1]))",
                   str(tmp_path / "metrics.json"))
    theirs = other.communicate()[0].strip()
    assert str(os.getpid()) in ours.name and ours.parent == tmp_path and str(ours) != theirs


# ----------------------------------------------------------------------------------------------- signals


SELF_SIGNAL = """
    import os, signal, sys
    from mimmo.cli import main
    from mimmo.training import MethodModule
    original = MethodModule.training_step
    SIGNAL = getattr(signal, sys.argv[1])

    def signal_in_epoch_two(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 3:
            os.kill(os.getpid(), SIGNAL)
        return original(self, batch, batch_idx)

    MethodModule.training_step = signal_in_epoch_two
    main(sys.argv[2:])
"""


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_the_run_non_zero_and_it_resumes_to_the_same_result(tmp_path, finished_run, name, code):
    reference_dir, reference = finished_run
    folder = tmp_path / "run"
    arguments = ["train", *TINY, f"hydra.run.dir={folder}"]
    process = python(SELF_SIGNAL, name, *arguments)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err
    assert f"stopped by {name} while working on {folder}" in err and "run the same command again to resume" in err
    assert not (folder / "metrics.json").exists() and (folder / "checkpoints" / "last.ckpt").is_file()
    assert not (folder / ".lock").exists()
    again = python("import sys; from mimmo.cli import main; main(sys.argv[1:])", *arguments)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    metrics = json.loads((folder / "metrics.json").read_text())
    assert results(metrics) == results(reference)


def test_a_grid_counts_a_stopped_sweep_as_not_finished():
    from mimmo.cli.grid import run_grid

    def stopped(arguments):
        raise SystemExit(143)

    lines: list[str] = []
    with pytest.raises(SystemExit) as exit_info:
        run_grid("paper_mini", ["seed=0"], train=stopped, out=lines.append)
    assert exit_info.value.code == 143
    assert lines[-1] == "[grid] sweep 1 stopped (resume by running the grid again)"


# ------------------------------------------------------------------------------------------ safe loading


CRAFTED_CHECKPOINT = """
    import pathlib, sys, torch

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (pathlib.Path(sys.argv[2]),))

    torch.save({"state_dict": {}, "epoch": 0, "payload": Payload()}, sys.argv[1])
"""


def test_a_crafted_checkpoint_is_refused_even_when_torch_is_told_to_trust_files(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    assert python(CRAFTED_CHECKPOINT, str(checkpoint), str(marker)).wait() == 0
    loader = python("""
        import sys
        from pathlib import Path
        from mimmo.runs.checkpoints import load_checkpoint
        try:
            load_checkpoint(Path(sys.argv[1]))
        except ValueError as error:
            print(error)
    """, str(checkpoint), env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    out, err = loader.communicate(timeout=120)
    assert "last.ckpt is truncated or corrupt" in out, err
    assert not marker.exists()


def test_resuming_asks_lightning_for_weights_only(monkeypatch, tmp_path, finished_run):
    calls = []
    original = L.Trainer.fit
    monkeypatch.setattr(L.Trainer, "fit", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    train(tiny("seed=3", "train.epochs=2"), tmp_path / "run")
    assert calls and all(call.get("weights_only") is True for call in calls)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1  # a real checkpoint loads under weights_only


def test_a_truncated_checkpoint_says_so_and_how_to_start_over(tmp_path, capsys):
    folder = tmp_path / "run"
    checkpoint = folder / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"epoch": 0, "state_dict": {"w": torch.zeros(1000)}}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, f"hydra.run.dir={folder}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{checkpoint} is truncated or corrupt" in err and f"to start this run over, remove {checkpoint}" in err


def test_an_environment_interpolation_in_a_run_config_is_refused_not_resolved(finished_run, tmp_path, monkeypatch):
    import shutil

    reference_dir, _ = finished_run
    run_dir = tmp_path / "copy"
    shutil.copytree(reference_dir, run_dir)
    config = (run_dir / "config.yaml").read_text().replace("model:\n", "secret: ${oc.env:MIMMO_TEST_SECRET}\nmodel:\n")
    (run_dir / "config.yaml").write_text(config)
    monkeypatch.setenv("MIMMO_TEST_SECRET", "hunter2")
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(ValueError, match=r"secret = '\$\{oc.env:MIMMO_TEST_SECRET\}' is an interpolation"):
        training.evaluate_run(run_dir)
    assert (run_dir / "metrics.json").read_text() == before
    assert "hunter2" not in before


# ------------------------------------------------------------------------------------------ folder names


def run_folder_of(overrides: list[str], output_dir: Path) -> Path:
    import hydra

    from mimmo.cli import CONFIG_DIR

    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose_run([*overrides, f"output_dir={output_dir}"], in_sweep=False)[1]


PRIOR = "method.prior=[[0.1,0.2],[0.2,0.3],[0.3,0.2],[0.4,0.3]]"
MANY = ["method=mimmo", PRIOR, "method.alpha=45000", "method.num_members=2", "model.width=0.5", "seed=4",
        "train.epochs=3", "train.batch_size=64", "train.lr=0.001", "data.train_size=1000", "train.warm_start_epochs=1",
        "model.layers=[2,4,6,2]", "evaluation.shifted=false", "data.validation_fraction=0.2"]


def test_a_long_run_folder_name_is_cut_and_ends_in_a_stable_hash(tmp_path):
    folder = run_folder_of(MANY, tmp_path)
    assert folder.parent == tmp_path
    assert len(folder.name.encode()) <= MAX_NAME_BYTES and "#" in folder.name
    assert folder.name.startswith("data.train_size=1000,data.validation_fraction=0.2,")
    assert run_folder_of(list(reversed(MANY)), tmp_path) == folder  # Hydra sorts the overrides
    assert run_folder_of([*MANY[:-1], "data.validation_fraction=0.3"], tmp_path) != folder
    # the hash is sha256 of the full override string: the same in every process and version
    full = ",".join(sorted(MANY)).replace("/", "_")
    assert folder.name.endswith("#" + __import__("hashlib").sha256(full.encode()).hexdigest()[:16])
    folder.mkdir(parents=True)
    cfg = compose([*MANY, *TINY[-2:]])
    assert cfg.method.prior == [[0.1, 0.2], [0.2, 0.3], [0.3, 0.2], [0.4, 0.3]]  # the full value is in the config


def test_short_names_and_existing_long_folders_keep_their_old_names(tmp_path):
    assert run_folder_of(["method=mimo", "seed=1"], tmp_path).name == "method=mimo,seed=1"
    assert run_folder_of([], tmp_path).name == "default"
    overrides = ["method=mimmo", "method.alpha=45000", "model.width=0.5", "train.epochs=3", "data.train_size=1000",
                 "train.batch_size=64", "model.layers=[2,4,6,2]", "seed=4"]
    old_name = ",".join(sorted(overrides))
    assert MAX_NAME_BYTES < len(old_name) <= 255
    assert run_folder_of(overrides, tmp_path).name != old_name
    (tmp_path / old_name).mkdir()  # made by an earlier version, which named folders after every override
    assert run_folder_of(overrides, tmp_path).name == old_name


def test_run_name_never_exceeds_the_limit_and_keeps_utf8_whole():
    for text in ["a=" + "x" * 400, "b=" + "é" * 300, ",".join(f"k{i}=v" for i in range(100))]:
        name = run_name(text)
        assert len(name.encode()) <= MAX_NAME_BYTES
        name.encode().decode()  # valid UTF-8


# -------------------------------------------------------------------------------- the one list of settings


def test_the_non_semantic_settings_are_one_list_read_by_hydra_training_and_reports(tmp_path):
    import hydra

    from mimmo.cli import CONFIG_DIR

    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra.compose(config_name="config", return_hydra_config=True)
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == list(NON_SEMANTIC_KEYS)
    assert set(NON_SEMANTIC_KEYS) <= IGNORED_SETTINGS
    assert config.NON_SEMANTIC_KEYS is NON_SEMANTIC_KEYS
    settings = ["train.channels_last=false", "train.compile=true", "train.threads=2", "train.progress_bar=true"]
    assert run_folder_of(["seed=1", *settings], tmp_path) == run_folder_of(["seed=1"], tmp_path)
    assert training.semantic_config(compose(settings)) == training.semantic_config(compose([]))


def test_a_report_groups_seeds_that_differ_only_in_layout_or_compile(finished_run, tmp_path):
    import shutil

    from mimmo.report.runs import group_runs

    reference_dir, _ = finished_run
    other = tmp_path / "other"
    shutil.copytree(reference_dir, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["seed"] = metrics["config"]["seed"] = 1
    metrics["config"]["train"] |= {"channels_last": False, "compile": True}
    (other / "metrics.json").write_text(json.dumps(metrics))
    groups = group_runs(load_runs([reference_dir, other]))
    assert len(groups) == 1 and groups[0].seeds == [0, 1]


# ------------------------------------------------------------------------------------------ channels-last


def test_auto_layout_is_standard_where_channels_last_is_unsafe():
    from mimmo.data.datasets import Normalizer

    def module(*overrides: str) -> training.MethodModule:
        cfg = tiny(*overrides)
        splits, method = training.prepare_run(cfg)
        return training.MethodModule(method, Normalizer.fit(splits.train.images), splits, cfg)

    assert module("method=base").uses_channels_last()  # 1-channel input images are fine
    assert not module("method=base", "model.width=0.0625", "model.stem_channels=16",
                      "model.planes=[16,16,16,16]").uses_channels_last()
    assert not module("method=base", "model.stem_channels=1").uses_channels_last()
    assert module("method=base", "model.stem_channels=1", "train.channels_last=true").uses_channels_last()


# ----------------------------------------------------------------------------------------------- refusals


@pytest.fixture
def copied_run(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run[0], run_dir)
    return run_dir


def test_evaluate_refuses_an_invalid_metrics_json_before_working(copied_run, capsys, monkeypatch):
    (copied_run / "metrics.json").write_text('{"test": ')
    monkeypatch.setattr(runs_evaluate, "evaluate_model", lambda *a: pytest.fail("evaluated first"))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(copied_run)])
    assert exit_info.value.code == 2
    assert f"mimmo evaluate: {copied_run / 'metrics.json'} is not valid JSON" in capsys.readouterr().err


def test_evaluate_refuses_a_folder_it_cannot_write_before_working(copied_run, capsys, monkeypatch):
    original = os.open

    def read_only(path, flags, *args):
        if Path(path).parent == copied_run.resolve() and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))  # as on a read-only folder (tests run as root)
        return original(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(runs_evaluate, "evaluate_model", lambda *a: pytest.fail("evaluated first"))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(copied_run)])
    assert exit_info.value.code == 2
    assert f"mimmo evaluate: run folder {copied_run.resolve()} is not writable" in capsys.readouterr().err


def test_report_skips_a_run_without_test_results_and_fails_when_nothing_is_left(copied_run, tmp_path, capsys):
    metrics = json.loads((copied_run / "metrics.json").read_text())
    del metrics["test"]
    (copied_run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(copied_run), "--out", str(tmp_path / "report"), "--no-figures"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{copied_run}: metrics.json lacks ['test']" in err and "no valid run found" in err


def test_an_atomic_write_that_fails_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    run_folder.write_json_atomic(path, {"test": 1})

    def failing_replace(source, target):
        raise OSError(errno.EIO, "input/output error")

    monkeypatch.setattr(run_folder.os, "replace", failing_replace)
    with pytest.raises(OSError, match="input/output error"):
        run_folder.write_json_atomic(path, {"test": 2})
    assert json.loads(path.read_text()) == {"test": 1} and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert OmegaConf.has_resolver("mimmo_non_semantic_keys")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stop_exits_with_128_plus_the_signal_number(signum, code, capsys):
    from mimmo.cli.errors import run_reporting_errors
    from mimmo.runs.signals import Interrupted

    def stopped():
        raise Interrupted(signum)

    with pytest.raises(SystemExit) as exit_info:
        run_reporting_errors("train", stopped)
    assert exit_info.value.code == code and capsys.readouterr().err.startswith("mimmo train: stopped by")
