"""Inputs and conditions that used to end in a traceback: each is now one line on stderr (exit 2 for a bad input,
before any run folder exists; 1 for a condition of the machine: no network, a full disk)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_runs import TINY as TINY_RUN

from mimmo.cli import best_device, main
from mimmo.config import compose
from mimmo.data import download as download_module
from mimmo.data.download import Archive
from mimmo.runs.folder import DiskFull
from mimmo.training import load_run, train

TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4", "data.train_size=128",
        "train.epochs=1", "train.batch_size=32", "train.progress_bar=false", "evaluation.shifted=false",
        "evaluation.calibrate=false", "method=base"]


def refused(capsys, argv: list[str], code: int = 2) -> str:
    """Run ``mimmo <argv>``, expect exit status ``code`` and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "base"
    train(compose(TINY), run_dir)
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def test_damaged_weights_are_refused_naming_the_file(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    (run / "weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"weights.safetensors is damaged and cannot be read"):
        load_run(run)
    line = refused(capsys, ["evaluate", str(run), "--device", "cpu"])
    assert line.startswith("mimmo evaluate: ") and "weights.safetensors is damaged" in line


def test_weights_of_another_model_are_refused_naming_the_differences(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    tensors = load_file(str(run / "weights.safetensors"))
    first = next(key for key in tensors if key.startswith("method.") and tensors[key].dim() == 4)
    tensors[first] = torch.zeros(1, *tensors[first].shape[1:])
    tensors.pop(next(key for key in tensors if key.endswith("bias") and key.startswith("method.")))
    tensors["method.extra"] = torch.zeros(1)
    save_file(tensors, str(run / "weights.safetensors"))
    with pytest.raises(ValueError, match=r"does not match the run's config.yaml \(3 differences in 'method': "
                                         r"missing .*bias; unexpected extra; .* has shape \(1, "):
        load_run(run)
    assert not load_run(finished)[0].training  # the intact run still loads


def test_a_cuda_device_without_cuda_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"--device cuda: this torch .* sees no CUDA device"):
        best_device("cuda")
    with pytest.raises(ValueError, match=r"--device 'gpu' is not a device name"):
        best_device("gpu")
    assert best_device("auto") == "cpu" and best_device("cpu") == "cpu"
    assert "sees no CUDA device" in refused(capsys, ["evaluate", str(tmp_path), "--device", "cuda"])


def test_report_into_an_existing_file_is_refused(tmp_path, capsys):
    out = tmp_path / "report.md"
    out.write_text("mine")
    line = refused(capsys, ["report", str(tmp_path), "--out", str(out)])
    assert line == f"mimmo report: --out {out} is a file; give a folder for the tables and figures (it is made if " \
                   "missing)"
    assert out.read_text() == "mine"


def test_download_without_network_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(download_module.CIFAR_ARCHIVES, "cifar10",
                        Archive("http://127.0.0.1:9/cifar-10-python.tar.gz", "0" * 32, "cifar-10-batches-py"))
    line = refused(capsys, ["train", "data=cifar10", f"data.root={tmp_path / 'data'}", "data.download=true",
                            *TINY, f"output_dir={tmp_path / 'runs'}"], code=1)
    assert line.startswith("mimmo train: could not download http://127.0.0.1:9/") and "offline" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["/tmp/a=b", "/tmp/runs_é"])
def test_an_unquoted_value_hydra_cannot_read_is_refused_with_the_hint_to_quote_it(tmp_path, capsys, value):
    line = refused(capsys, ["train", f"output_dir={value}"])
    assert line.startswith(f"mimmo train: the override 'output_dir={value}' cannot be read")
    assert f"quote a value that holds '=', spaces, brackets or non-ASCII characters: output_dir='{value}'" in line
    cost = refused(capsys, ["cost", f"output_dir={value}"])
    assert cost.startswith("mimmo cost: the override")


def test_missing_cifar_exits_2_before_any_folder(tmp_path, capsys):
    line = refused(capsys, ["train", "data=cifar100", "data.root=/nonexistent", f"output_dir={tmp_path / 'runs'}"])
    assert line.startswith("mimmo train: dataset cifar100: expected the folder /nonexistent/cifar-100-python")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("members", ["a,b", "0", ""])
def test_cost_members_that_are_not_sizes_exit_2(capsys, members):
    line = refused(capsys, ["cost", "--table", "--members", members])
    assert line == f"mimmo cost: --members takes a comma-separated list of integers >= 1, e.g. 2,4,8, got {members!r}"


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_says_how_much_is_free(tmp_path,
                                                                                                 monkeypatch):
    run_dir = tmp_path / "run"
    original = L.Trainer.save_checkpoint
    calls: list[str] = []

    def fills_the_disk(self, filepath, *args, **kwargs):
        calls.append(str(filepath))
        if len(calls) == 1:
            return original(self, filepath, *args, **kwargs)
        Path(filepath).write_bytes(b"half a checkpoint")  # the write got this far
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(L.Trainer, "save_checkpoint", fills_the_disk)
    message = (r"no space left on the device while writing .*checkpoints/last.ckpt \(\d+\.\d MB free on "
               r".*checkpoints\); the previous version of the file is kept")
    with pytest.raises(DiskFull, match=message):
        train(compose([*TINY, "train.epochs=2"]), run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no temporary left
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.alpha=inf"], "mimmo train: alpha (KL weight) must be a finite number >= 0, got inf"),
    (["train.lr=inf"], "mimmo train: train.lr must be a finite number > 0, got inf"),
    (["method.num_members=true"], "mimmo train: num_members must be an integer >= 1, got True"),
    (["train.batch_size=5000"], "mimmo train: train.batch_size must be <= the training split's 256 images"),
    (["method.nope=1"], "mimmo train: Could not override 'method.nope'."),
])
def test_refusals_are_one_line_with_status_2_and_leave_no_folder(tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY_RUN, *overrides, f"output_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--debug", "train", *TINY_RUN, "train.lr=inf", f"output_dir={tmp_path}"])
    os.environ.pop("MIMMO_DEBUG")
    assert exit_info.value.code == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_multirun_is_checked_completely_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--multirun", *TINY_RUN, "method=base,mimmo", "train.epochs=1", f"output_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert "warm_start_epochs (1) must be < train.epochs (1)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_demo_checks_every_run_before_training_any(tmp_path, capsys, monkeypatch):
    from mimmo.cli import demo

    monkeypatch.setattr(demo, "train", lambda *a, **k: pytest.fail("trained before every run was checked"))
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--epochs", "1", "--output-dir", str(tmp_path / "demo")])
    assert exit_info.value.code == 2
    assert "the demo's mimmo run: method.warm_start_epochs (3) must be < train.epochs (1)" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
