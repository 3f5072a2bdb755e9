"""train.loggers: TensorBoard, MLflow and W&B (offline) receive the CSV's per-epoch metrics, theta and the final
summary, read back from the files they write; a missing package is refused before any run folder exists.

The three packages come from optional extras; the tests that need one skip without it (CI installs them in a step
of its own, .ci/run)."""

from __future__ import annotations

import csv
import glob
import json
import struct
from pathlib import Path

import pytest

from mimmo.cli import main as cli_main
from mimmo.config import compose
from mimmo.runs.loggers import extra_loggers
from mimmo.training import MethodModule, train
from mimmo.training.loggers import check_loggers, logger_names

TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4", "data.train_size=128",
        "train.epochs=2", "train.batch_size=32", "train.progress_bar=false", "evaluation.shifted=false",
        "train.threads=1", "method=mimmo", "method.warm_start_epochs=1"]
ALL = "train.loggers=[csv,tensorboard,mlflow,wandb]"


class CutOff(Exception):
    """Stands for a run killed from outside."""


def csv_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Every metric column of log/metrics.csv: its non-empty values in order."""
    with open(run_dir / "log" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [key for key in rows[0] if key not in ("epoch", "step")]
    return {key: [float(row[key]) for row in rows if row[key]] for key in columns}


def quiet_environment(patch: pytest.MonkeyPatch, home: Path) -> None:
    """No W&B key, no WANDB_MODE, no MLflow server: the defaults the loggers must pick offline."""
    for key in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI", "WANDB_PROJECT"):
        patch.delenv(key, raising=False)
    patch.setenv("HOME", str(home))  # no ~/.netrc: wandb login has not been run
    patch.setenv("WANDB_SILENT", "true")
    patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the test's own MlflowClient reading the store back


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[Path, dict]:
    for package in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(package)
    root = tmp_path_factory.mktemp("logged")
    with pytest.MonkeyPatch.context() as patch:
        quiet_environment(patch, root)
        run_dir = root / "run"
        return run_dir, train(compose([*TINY, ALL]), run_dir)


def test_tensorboard_events_hold_the_csv_metrics_theta_and_the_summary(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics = logged_run
    events = EventAccumulator(str(run_dir / "log" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = csv_metrics(run_dir)
    for key, values in expected.items():
        assert [e.value for e in events.Scalars(key)] == pytest.approx(values, rel=1e-6), key
    depth, members = len(metrics["exit_weights"]), len(metrics["exit_weights"][0])
    theta = sorted(tag for tag in tags if tag.startswith("theta/"))
    assert len(theta) == depth * members
    per_epoch = [[e.value for e in events.Scalars(f"theta/exit{i + 1}_member{m + 1}")] for i in range(depth)
                 for m in range(members)]
    history = metrics["exit_weights_history"]
    assert len(history) == 2  # two epochs
    assert per_epoch == [pytest.approx([epoch[i][m] for epoch in history], rel=1e-6) for i in range(depth)
                         for m in range(members)]
    assert events.Scalars("test/nll")[-1].value == pytest.approx(metrics["test"]["nll"], rel=1e-6)
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)


def test_mlflow_file_store_in_the_run_folder_holds_the_same_metrics(logged_run):
    from mlflow.tracking import MlflowClient

    run_dir, metrics = logged_run
    store = run_dir / "log" / "mlruns"
    assert store.is_dir()
    run_id = json.loads((run_dir / "log" / "loggers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    for key, values in csv_metrics(run_dir).items():
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        assert [m.value for m in history] == pytest.approx(values, rel=1e-9), key
    assert client.get_metric_history(run_id, "test/nll")[-1].value == pytest.approx(metrics["test"]["nll"])
    assert client.get_run(run_id).info.status == "FINISHED"


def wandb_records(run_dir: Path) -> list[dict[str, float]]:
    """The history rows of the offline run's transaction log (W&B's .wandb file: a LevelDB-style log of protobuf
    records, 32 KiB blocks after a 7-byte header; every record header is crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "log" / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, position, chunk, rows = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        position += 7
        chunk += data[position:position + length]
        position += length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_runs_offline_without_a_key_and_its_log_holds_the_same_metrics(logged_run):
    run_dir, metrics = logged_run
    rows = wandb_records(run_dir)
    for key, values in csv_metrics(run_dir).items():
        assert [row[key] for row in rows if key in row] == pytest.approx(values, rel=1e-6), key
    assert [row["test/nll"] for row in rows if "test/nll" in row] == pytest.approx([metrics["test"]["nll"]])
    assert sum("theta/exit1_member1" in row for row in rows) == 2


def test_a_resumed_run_continues_the_same_mlflow_run_and_tensorboard_folder(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    quiet_environment(monkeypatch, tmp_path)
    cfg = compose([*TINY, "train.loggers=[tensorboard,mlflow]"])
    run_dir = tmp_path / "run"
    original = MethodModule.training_step

    def cut_in_epoch_two(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise CutOff("killed")
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(MethodModule, "training_step", cut_in_epoch_two)
        with pytest.raises(CutOff):
            train(cfg, run_dir)
    first_id = json.loads((run_dir / "log" / "loggers.json").read_text())["mlflow"]
    train(cfg, run_dir)
    assert json.loads((run_dir / "log" / "loggers.json").read_text())["mlflow"] == first_id
    client = MlflowClient(tracking_uri=(run_dir / "log" / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "mimmo"]
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [first_id]
    assert [m.value for m in sorted(client.get_metric_history(first_id, "val/nll"), key=lambda m: m.step)] == \
        pytest.approx(csv_metrics(run_dir)["val/nll"], rel=1e-9)
    # one folder: an event file per start (and one for the summary written after training), read as one run
    assert len(list((run_dir / "log" / "tensorboard").glob("events.out.tfevents.*"))) == 3
    events = EventAccumulator(str(run_dir / "log" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("val/nll")] == pytest.approx(csv_metrics(run_dir)["val/nll"], rel=1e-6)


def test_logger_names_keep_csv_first_and_refuse_unknown_names():
    assert logger_names([]) == ["csv"]
    assert logger_names(["tensorboard", "csv", "tensorboard"]) == ["csv", "tensorboard"]
    with pytest.raises(ValueError, match=r"unknown logger\(s\) \['neptune'\]; choose from \['csv', 'tensorboard'"):
        logger_names(["csv", "neptune"])
    with pytest.raises(ValueError, match="must be a list of logger names"):
        logger_names("tensorboard")


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_logger_whose_package_is_missing_is_refused_before_any_run_folder(name, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr("mimmo.training.loggers.importlib.util.find_spec",
                        lambda module, *a: None if module == name else find_spec(module, *a))
    with pytest.raises(ValueError, match=rf"pip install 'mimmo\[{name}\]'"):
        check_loggers(["csv", name])
    with pytest.raises(SystemExit) as stopped:
        cli_main(["train", *TINY, f"train.loggers=[csv,{name}]", f"output_dir={tmp_path / 'runs'}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mimmo train: train.loggers: {name} needs the package '{name}', which is not installed; "
                   f"install it with pip install 'mimmo[{name}]'"]
    assert not (tmp_path / "runs").exists()


def test_loggers_do_not_name_the_run_folder():
    """train.loggers changes what is logged, not what is computed: the same folder, and a finished run is reused."""
    from mimmo.runs.folder import semantic_config

    assert semantic_config(compose([*TINY, "train.loggers=[csv,tensorboard]"])) == semantic_config(compose(TINY))


def test_mlflow_and_wandb_ids_are_kept_for_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    quiet_environment(monkeypatch, tmp_path)
    first = extra_loggers(["csv", "mlflow"], tmp_path / "log", "run")
    second = extra_loggers(["csv", "mlflow"], tmp_path / "log", "run")
    assert first[0].run_id == second[0].run_id
