"""What the command line prints: --version, mimmo's help, quiet logs without doubled lines, the summary at the
end of `mimmo train`, the demo's folders and table, and one colour per method across figures."""

from __future__ import annotations

import io
import json
import logging
import warnings

import pytest

import mimmo
from mimmo.cli import main
from mimmo.runs import console

TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4", "data.train_size=64",
        "train.epochs=1", "train.batch_size=32", "train.warm_start_epochs=0", "evaluation.shifted=false",
        "train.progress_bar=false", "method=base"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mimmo {mimmo.__version__}"


def test_each_command_has_mimmos_help(capsys):
    main(["train", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: mimmo train") and "Hydra" not in text.splitlines()[0]
    assert "powered by Hydra" not in text
    for expected in ("method=NAME", "mimmo_gamma", "output_dir=DIR", "--multirun", "where runs go", "examples:"):
        assert expected in text
    main(["cost", "--help"])
    assert "usage: mimmo cost" in capsys.readouterr().out
    for command in ("grid", "evaluate", "calibrate", "report", "demo"):
        main([command, "--help"])  # one place answers --help for every command, before its arguments are parsed
        text = capsys.readouterr().out
        assert f"usage: mimmo {command}" in text and ("example" in text or command in ("grid", "calibrate")), command
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--version" in capsys.readouterr().out


def _console_lines(verbose: bool, monkeypatch) -> tuple[str, list[str]]:
    """What a Lightning info line and a mimmo line print, and which deprecation warnings are shown, after
    ``configure_console`` (with one console handler on the root logger, as Hydra's job logging sets up)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(console.ConsoleFormatter())
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        console.configure_console(verbose=verbose)
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
        logging.getLogger("mimmo").info("evaluation: clean test set ...")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    return stream.getvalue(), [str(w.message) for w in shown]


def test_quiet_by_default_and_every_line_once_when_verbose(monkeypatch):
    lightning = logging.getLogger("lightning")
    monkeypatch.setattr(lightning, "handlers", list(lightning.handlers))  # restored after the test
    assert _console_lines(False, monkeypatch) == ("evaluation: clean test set ...\n", [])
    loud, shown = _console_lines(True, monkeypatch)
    assert loud.count("GPU available") == 1  # Lightning's own handler is gone: not doubled by the root's
    assert "evaluation: clean test set ..." in loud and shown == ["old API"]


def test_verbose_flag_is_taken_off_the_command_line(monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    assert console.pop_verbose(["train", "--verbose", "seed=1"]) == ["train", "seed=1"]
    assert console.is_verbose()
    monkeypatch.delenv(console.VERBOSE_ENV)
    assert not console.is_verbose()


def test_train_ends_with_its_summary_and_no_banner(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    main(["train", *TINY, f"output_dir={tmp_path}"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    run_dir = next(tmp_path.glob("*/metrics.json")).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert f"run folder: {run_dir}\n" in text
    assert (f"test set: accuracy {test['accuracy']:.4f}, NLL {test['nll']:.4f}, ECE {test['ece']:.4f}, "
            f"Brier {test['brier']:.5f}") in text
    assert "time: training " in text and ", evaluation " in text
    for phase in ("evaluation: clean test set", "evaluation: validation set", "evaluation: cost and feature-reuse"):
        assert text.count(phase) == 1, phase
    for noise in ("GPU available", "TPU available", "litlogger", "deprecated", "`Trainer.fit` stopped"):
        assert noise not in text, noise
    # Started again: the finished run is not trained again; its summary says so.
    main(["train", *TINY, f"output_dir={tmp_path}"])
    again = capsys.readouterr().out
    assert f"run folder: {run_dir} (finished before: reused)" in again and "training base" not in again


def test_run_summary_text():
    metrics = {"test": {"accuracy": 0.5, "nll": 1.25, "ece": 0.125, "brier": 0.0625},
               "shifted": {"summary": {"accuracy": {"mean": 0.25}, "nll": {"mean": 2.5}}},
               "time": {"train_seconds": 125.2, "evaluate_seconds": 21.0}}
    assert console.run_summary("runs/x", metrics) == (
        "run folder: runs/x\n"
        "test set: accuracy 0.5000, NLL 1.2500, ECE 0.1250, Brier 0.06250\n"
        "shifted sets (mean of 25): accuracy 0.2500, NLL 2.5000\n"
        "time: training 2 min 05 s, evaluation 21 s")
    assert console.format_duration(7384) == "2 h 03 min"


