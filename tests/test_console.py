"""What the command line prints: --version, mimmo's help, quiet logs without doubled lines, the summary at the
end of `mimmo train`, the demo's folders and table, and one colour per method across figures."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba
from omegaconf import OmegaConf

import mimmo
from mimmo.cli import demo, main
from mimmo.methods.registry import METHODS
from mimmo.report import figures
from mimmo.report.runs import group_runs, load_runs
from mimmo.report.style import method_colour, method_marker
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


def test_demo_folders_per_configuration_and_reused_runs(tmp_path, monkeypatch, capsys):
    """Another --epochs trains into other folders (never a clash); a finished run shows as reused."""
    trained: list[Path] = []

    def fake_train(cfg, run_dir):
        trained.append(Path(run_dir))
        metrics = {"method": cfg.method.name, "num_members": 2, "num_exits": 1,
                   "config": {"train": OmegaConf.to_container(cfg.train)},
                   "test": {"accuracy": 0.5, "nll": 1.0, "ece": 0.1, "brier": 0.05},
                   "cost": {"flops": 2e6, "params": 1e5}}
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(demo, "train", fake_train)
    first = demo.run_demo(tmp_path, epochs=4)
    assert len(trained) == 3 and all("_epochs=4_" in p.name for p in trained)
    assert "reused" not in first and "| 4 |" in first
    second = demo.run_demo(tmp_path, epochs=5)
    assert len(trained) == 6 and not set(trained[:3]) & set(trained[3:])
    assert "reused" not in second
    monkeypatch.setattr(demo, "train", lambda cfg, run_dir: json.loads((Path(run_dir) / "metrics.json").read_text()))
    third = demo.run_demo(tmp_path, epochs=4)
    assert [line.split(" | ")[-1] for line in third.splitlines()[2:5]] == ["reused |"] * 3
    assert "[demo 1/3] base: finished before, reused" in capsys.readouterr().out


def test_demo_findings_say_what_the_numbers_show():
    def row(method, members, exits, accuracy, nll, gap, shifted_nll):
        return {"method": method, "num_members": members, "num_exits": exits,
                "test": {"accuracy": accuracy, "nll": nll, "accuracy_minus_confidence": gap},
                "shifted": {"summary": {"nll": {"mean": shifted_nll}}}}

    rows = [row("base", 1, 1, 0.96, 0.13, 0.01, 4.98), row("mimo", 2, 1, 0.92, 0.27, 0.03, 4.46),
            row("mimmo", 2, 4, 0.90, 0.48, 0.15, 3.75)]
    clean, shifted = demo.findings(rows)
    assert clean.startswith("Clean test set: base is the most accurate (0.960) and has the lowest NLL (0.130)")
    assert "base +0.010, mimo +0.030, mimmo +0.150" in clean
    assert "mimo and mimmo average several predictions" in clean  # Base, one prediction, is not named
    assert shifted.startswith("Under the 25 shifts (mean): NLL base 4.98, mimo 4.46, mimmo 3.75; mimmo holds up best")
    rows[2]["test"].update(nll=0.10, accuracy_minus_confidence=0.0)
    clean, _ = demo.findings(rows)
    assert "mimmo has the lowest NLL (0.100)" in clean and "; mimo averages several predictions" in clean
    del rows[0]["shifted"]  # a run evaluated without the shifted sets: no line on them
    assert len(demo.findings(rows)) == 1


def test_demo_says_which_runs_are_still_training(tmp_path):
    rows = []
    for method, losses in (("base", [1.0, 0.5, 0.30, 0.298]), ("mimmo", [4.0, 3.0, 2.0, 1.5])):
        (tmp_path / method / "log").mkdir(parents=True)
        lines = ["epoch,step,train/loss"] + [f"{e},{e},{loss}" for e, loss in enumerate(losses)]
        (tmp_path / method / "log" / "metrics.csv").write_text("\n".join(lines) + "\n")
        rows.append({"method": method, "config": {"train": {"epochs": 4}}, "run_dir": tmp_path / method})
    # 4 epochs: the last 10% is the last epoch. MIMMO fell 0.5 of its whole fall of 2.5 there (20%); Base 0.002 of
    # 0.702 (0.3%, flat: its relative change of -0.7% would say the same, but a loss near 0 can halve while flat).
    assert demo.still_training(rows) == (
        "Still training: in the last 10% of the epochs the training objective still made mimmo 20% of its whole "
        "fall, so these runs are not converged; `mimmo demo --epochs N` trains longer (into new folders).")
    assert demo.still_training(rows[:1]) is None
    assert demo.still_training(rows, threshold=0.25) is None


def _colours_by_marker(monkeypatch, make) -> dict[str, set[tuple]]:
    """The colours of the data markers in the figure that ``make`` draws, per marker (a method's marker)."""
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure) or Path(path))
    make()
    colours: dict[str, set[tuple]] = {}
    for ax in drawn[0].axes:
        for line in ax.get_lines():
            if line.get_marker() not in ("None", None, "", "_", "|"):  # not an error bar's cap
                colours.setdefault(line.get_marker(), set()).add(to_rgba(line.get_color()))
    return colours


def test_one_colour_and_marker_per_method_across_figures(runs_dir: Path, tmp_path: Path, monkeypatch):
    assert len({method.colour for method in METHODS.values()}) == len(METHODS)
    assert len({method.marker for method in METHODS.values()}) == len(METHODS)
    groups = group_runs(load_runs([runs_dir]))
    without_base = [g for g in groups if g.method != "base"]  # the methods at other positions in the figure
    shift = _colours_by_marker(monkeypatch, lambda: figures.shift_figure(groups, tmp_path / "a.png"))
    cost = _colours_by_marker(monkeypatch, lambda: figures.cost_figure(without_base, tmp_path / "b.png"))
    for method in ("mimo", "mimmo"):
        assert shift[method_marker(method)] == cost[method_marker(method)] == {to_rgba(method_colour(method))}
    assert shift[method_marker("base")] == {to_rgba(method_colour("base"))} and method_marker("base") not in cost


def test_demo_refuses_too_few_epochs_before_training_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "train", lambda cfg, run_dir: pytest.fail("nothing may train"))
    with pytest.raises(ValueError, match=r"warm_start_epochs \(3\) must be < train.epochs \(1\)"):
        demo.run_demo(tmp_path, epochs=1)
