"""Reports from fabricated run folders: loading, grouping, tables (exact text) and every figure."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path

import pytest
from fake_runs import PNG_MAGIC, results, write_run
from matplotlib.colors import to_rgba

from mimmo.cli import main
from mimmo.methods.registry import METHODS
from mimmo.report import figures, report
from mimmo.report.figures import (
    alpha_ablation_figure,
    cost_figure,
    depth_width_figure,
    exit_weights_figure,
    exit_weights_history_figure,
    feature_reuse_figure,
    make_figures,
    reliability_figure,
    shift_figure,
)
from mimmo.report.runs import NonFiniteMetricsWarning, SkippedRunsWarning, group_runs, load_runs, mean_std
from mimmo.report.stats import interval, paired, provenance_markdown, t_quantile_975
from mimmo.report.style import method_colour, method_marker
from mimmo.report.tables import build_tables, row_label, to_csv, to_latex, to_markdown, write_tables

EXPECTED_TABLE = """\
### embedded, M = 2

| Method | Accuracy | NLL | ECE | Brier ×10³ | FLOPs [M] | Params [M] |
|:--|--:|--:|--:|--:|--:|--:|
| Base | 0.52 ± 0.25 | 3.94 ± 0.25 | 0.36 ± 0.00 | 8.00 ± 2.54 | 109.85 | 1.76 |
| MIMO | 0.47 | 3.53 | 0.22 | 7.52 | 110.35 | 1.81 |
| MIMMO | **0.61 ± 0.13** | **1.50 ± 0.13** | **0.14 ± 0.00** | **5.22 ± 0.25** | 172.82 | 2.04 |
| *Shifted test sets (mean over the 25 sets)* | | | | | | |
| Base | 0.25 ± 0.13 | 7.88 ± 0.51 | 0.72 ± 0.00 | 12.00 ± 3.81 | 109.85 | 1.76 |
| MIMO | 0.21 | 7.06 | 0.44 | 11.28 | 110.35 | 1.81 |
| MIMMO | **0.32 ± 0.13** | **3.00 ± 0.25** | **0.28 ± 0.00** | **7.83 ± 0.38** | 172.82 | 2.04 |

Mean ± half-width of the 95% t interval over seeds (a row with one seed shows none); seeds per row (n): Base 2, \
MIMO 1, MIMMO 2.
"""


def test_load_group_and_table(runs_dir: Path, tmp_path: Path):
    runs = load_runs([runs_dir])
    assert len(runs) == 5
    groups = group_runs(runs)
    assert [(g.method, g.num_members, len(g.runs)) for g in groups] == [("base", 1, 2), ("mimmo", 2, 2),
                                                                         ("mimo", 2, 1)]
    tables = build_tables(groups)
    assert len(tables) == 1 and tables[0].num_members == 2
    assert to_markdown(tables[0]) == EXPECTED_TABLE
    latex = to_latex(tables[0])
    assert r"MIMMO & $\textbf{0.61} \pm \textbf{0.13}$ & $\textbf{1.50} \pm \textbf{0.13}$" in latex
    base_row = (r"Base & $0.52 \pm 0.25$ & $3.94 \pm 0.25$ & $0.36 \pm 0.00$ & $8.00 \pm 2.54$ & "
                r"109.85 & 1.76 \\")
    assert base_row in latex
    assert latex.count(r"\midrule") == 2
    csv_lines = to_csv(tables[0]).splitlines()
    assert csv_lines[0].startswith("dataset,block,method,label,num_members,num_seeds,accuracy_mean,")
    assert csv_lines[1].startswith("embedded,test,base,Base,1,2,0.52")
    assert len(csv_lines) == 7
    markdown, paths = write_tables(groups, tmp_path / "out")
    assert markdown == EXPECTED_TABLE
    assert sorted(p.name for p in paths) == ["table_embedded_M2.csv", "table_embedded_M2.md",
                                             "table_embedded_M2.tex"]


def test_a_setting_added_after_a_run_was_saved_reads_as_its_old_behaviour(tmp_path: Path):
    """A seed saved before train.optimizer (and the other recipe settings) existed groups with a seed saved after,
    whose config has the value those runs were computed under (adam); a run with another value does not."""
    test = results(0.6, 1.5, 0.14, 0.005)
    write_run(tmp_path / "old", "mimo", 2, 0, test, 0.3, 1, 1)  # config without train.optimizer
    write_run(tmp_path / "new", "mimo", 2, 1, test, 0.3, 1, 1, train__optimizer="adam", train__milestones=[],
              train__augment="none", data__label_noise=0.0)
    write_run(tmp_path / "sgd", "mimo", 2, 2, test, 0.3, 1, 1, train__optimizer="sgd")
    groups = group_runs(load_runs([tmp_path]))
    assert sorted((len(g.runs), g.context) for g in groups) == [(1, (("train.optimizer", "sgd"),)),
                                                                (2, (("train.optimizer", "adam"),))]


def test_mean_std_is_population():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)


def test_paper_order_and_base_in_every_table(runs_dir: Path):
    write_run(runs_dir / "mimmo4" / "0", "mimmo", 4, 0, results(0.6, 1.5, 0.14, 0.005), 0.3, 174_110_000,
              2_150_000, num_exits=4)
    write_run(runs_dir / "gamma" / "0", "mimmo_gamma", 2, 0, results(0.62, 1.5, 0.16, 0.0052), 0.32,
              172_820_000, 2_040_000, num_exits=4)
    tables = build_tables(group_runs(load_runs([runs_dir])))
    assert [t.num_members for t in tables] == [2, 4]
    first_column = [line.split(" | ")[0] for line in to_markdown(tables[0]).splitlines()[4:7]]
    assert first_column == ["| Base", "| MIMO", "| MIMMO-γ"]
    second_column = [line.split(" | ")[0] for line in to_markdown(tables[1]).splitlines()[4:6]]
    assert second_column == ["| Base", "| MIMMO"]


def test_runs_differing_in_a_setting_make_one_table_per_setting(runs_dir: Path, tmp_path: Path):
    """Runs at other epochs do not stop the report: they get their own table, named after the setting."""
    write_run(runs_dir / "mimo_long" / "0", "mimo", 2, 0, results(0.55, 3.0, 0.2, 0.0070), 0.25, 110_350_000,
              1_810_000, train__epochs=10)
    write_run(runs_dir / "base_long" / "0", "base", 1, 0, results(0.56, 3.1, 0.3, 0.0075), 0.26, 109_852_872,
              1_756_340, train__epochs=10)
    groups = group_runs(load_runs([runs_dir]))
    assert {g.context for g in groups} == {(("train.epochs", 2),), (("train.epochs", 10),)}
    tables = build_tables(groups)
    assert [(t.title, [row_label(g, t) for g in t.groups]) for t in tables] == [
        ("embedded, M = 2 (train.epochs=2)", ["Base", "MIMO", "MIMMO"]),
        ("embedded, M = 2 (train.epochs=10)", ["Base", "MIMO"])]
    text = report([runs_dir], tmp_path / "report")
    assert "### embedded, M = 2 (train.epochs=10)" in text
    assert "| MIMO | 0.55 | **3.00** |" in text  # one seed: no ± interval
    assert "One seed per row (no interval)." in text
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"table_embedded_M2_train.epochs=2.md", "table_embedded_M2_train.epochs=10.csv"} <= files
    csv_text = (tmp_path / "report" / "table_embedded_M2_train.epochs=10.csv").read_text()
    assert csv_text.splitlines()[1].endswith(",train.epochs=10")


def test_a_method_setting_that_varies_becomes_rows(runs_dir: Path):
    write_run(runs_dir / "mimo_rho" / "0", "mimo", 2, 0, results(0.5, 3.4, 0.2, 0.0074), 0.22, 110_350_000,
              1_810_000, method__input_repetition=0.5)
    tables = build_tables(group_runs(load_runs([runs_dir])))
    assert len(tables) == 1
    assert [row_label(g, tables[0]) for g in tables[0].groups] == [
        "Base", "MIMO (method.input_repetition=0.5)", "MIMO (method.input_repetition=None)", "MIMMO"]


def test_ablation_settings_become_rows(runs_dir: Path):
    write_run(runs_dir / "mimmo_a100" / "0", "mimmo", 2, 0, results(0.63, 1.4, 0.12, 0.005), 0.34,
              172_820_000, 2_040_000, num_exits=4, method__alpha=100.0)
    groups = group_runs(load_runs([runs_dir]))
    labels = [line.split(" | ")[0] for line in to_markdown(build_tables(groups)[0]).splitlines()[4:8]]
    assert labels == ["| Base", "| MIMO", "| MIMMO (α=1)", "| MIMMO (α=100)"]


def test_incomplete_and_invalid_folders_are_skipped_and_named(runs_dir: Path, tmp_path: Path):
    (runs_dir / "crashed" / "checkpoints").mkdir(parents=True)
    bad_json = runs_dir / "broken"
    bad_json.mkdir()
    (bad_json / "metrics.json").write_text("{not json")
    old = write_run(runs_dir / "old", "mimo", 2, 5, results(0.4, 3.0, 0.2, 0.007), 0.2, 1, 1)
    metrics = json.loads((old / "metrics.json").read_text())
    metrics["format_version"] = 0
    (old / "metrics.json").write_text(json.dumps(metrics))
    missing = tmp_path / "nowhere"
    with pytest.warns(SkippedRunsWarning) as record:
        runs = load_runs([runs_dir, missing])
    assert len(runs) == 5
    message = str(record[0].message)
    for name in ("crashed", "broken", "old", "nowhere", "format_version 0", "is not valid JSON"):
        assert name in message
    with pytest.warns(SkippedRunsWarning), pytest.raises(ValueError, match="no valid run"):
        load_runs([runs_dir / "crashed"])


def test_a_nan_metric_shows_as_nan_in_every_table_with_one_line_naming_the_run(tmp_path: Path, capsys):
    """A run whose metrics are NaN (a diverged run) keeps its row in the results and the confidence tables, as
    nan, and `mimmo report` names it in one line on stderr; the other rows and the best values are unchanged."""
    nan = float("nan")
    diverged = write_run(tmp_path / "runs" / "base", "base", 1, 0,
                         {**results(nan, nan, nan, nan), "confidence": nan, "accuracy_minus_confidence": nan},
                         nan, 1, 1)
    write_run(tmp_path / "runs" / "mimo", "mimo", 2, 0,
              {**results(0.47, 3.53, 0.22, 0.00752), "confidence": 0.5, "accuracy_minus_confidence": -0.03}, 0.21,
              1, 1)
    write_run(tmp_path / "runs" / "mimmo", "mimmo", 2, 0,
              {**results(0.6, 1.5, 0.14, 0.0052), "confidence": 0.62, "accuracy_minus_confidence": -0.02}, 0.3, 1, 1)
    with pytest.warns(NonFiniteMetricsWarning, match=rf"{diverged}: metrics.json holds \d+ non-finite value\(s\) "
                                                     r"\(test.accuracy, test.nll, test.ece and \d+ more\)"):
        text = report([tmp_path / "runs"], tmp_path / "out", figures=False)
    results_table = text.split("## Confidence\n")[0]
    assert "| Base | nan | nan | nan | nan | 0.00 | 0.00 |" in results_table  # the test block
    assert results_table.count("| Base | nan |") == 2  # and the shifted block
    assert "| MIMMO | **0.60** | **1.50** | **0.14** | **5.20** |" in results_table
    assert "| Base | nan | nan | +nan |" in text.split("## Confidence\n")[1]
    csv = (tmp_path / "out" / "table_embedded_M2.csv").read_text().splitlines()
    assert csv[1].startswith("embedded,test,base,Base,1,1,nan,,,nan,,,nan,,,nan,,,")
    assert "| Base | +nan 0/1 | +nan 0/1 |" in (tmp_path / "out" / "comparison.md").read_text()
    assert "base,Base,1,,0,base,nan,nan," in (tmp_path / "out" / "per_seed.csv").read_text()

    main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "again"), "--no-figures"])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"mimmo report: {diverged}: metrics.json holds ")


def test_report_writes_tables_figures_and_markdown(runs_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    text = report([runs_dir], out)
    assert EXPECTED_TABLE in text
    assert (out / "report.md").read_text() == text
    assert (out / "table_embedded_M2.tex").is_file()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "reliability_embedded_M2.png" in figures and "shifts_embedded_M2.png" in figures
    assert "cost_embedded.png" in figures and "exit_weights_embedded_M2.png" in figures
    assert "feature_reuse_embedded_mimmo_M2.png" in figures
    assert "exit_weights_history_embedded_mimmo_M2.png" in figures
    assert not any(name.startswith("ablation") for name in figures)  # one alpha, one shape: no ablation


def _assert_png(path: Path | None) -> None:
    assert path is not None and path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_every_figure_function_writes_a_png(runs_dir: Path, tmp_path: Path):
    for alpha, seed_acc in ((0.0, 0.55), (100.0, 0.63), (45000.0, 0.64)):
        write_run(runs_dir / f"alpha{alpha:g}", "mimmo", 2, 0, results(seed_acc, 1.4, 0.12, 0.005), 0.3,
                  172_820_000, 2_040_000, num_exits=4, method__alpha=alpha)
    write_run(runs_dir / "deep", "mimmo", 4, 0, results(0.65, 1.3, 0.1, 0.0048), 0.35, 300_000_000, 4_000_000,
              num_exits=4, model__layers=[2, 4, 6, 2], model__width=2.0)
    groups = group_runs(load_runs([runs_dir]))
    out = tmp_path / "figs"
    mimmo = [g for g in groups if g.method == "mimmo"]
    _assert_png(reliability_figure(groups, out / "reliability.png"))
    _assert_png(exit_weights_figure(groups, out / "theta.png"))
    _assert_png(exit_weights_history_figure(mimmo[0], out / "theta_history.png"))
    _assert_png(shift_figure(groups, out / "shifts.png"))
    _assert_png(cost_figure(groups, out / "cost.png"))
    _assert_png(alpha_ablation_figure(mimmo, out / "alpha.png"))
    _assert_png(depth_width_figure(mimmo, out / "depth_width.png"))
    _assert_png(feature_reuse_figure(mimmo[0], out / "feature_reuse.png"))
    base = [g for g in groups if g.method == "base"]
    assert exit_weights_figure(base, out / "none.png") is None
    assert feature_reuse_figure(base[0], out / "none.png") is None
    assert alpha_ablation_figure(base, out / "none.png") is None
    written = make_figures(load_runs([runs_dir]), tmp_path / "all")
    names = {p.name for p in written}
    assert "ablation_alpha_embedded_mimmo.png" in names and "ablation_depth_width_embedded_mimmo.png" in names
    for path in written:
        _assert_png(path)


def test_config_is_read_from_yaml_when_metrics_lacks_it(runs_dir: Path):
    folder = runs_dir / "mimo" / "0"
    metrics = json.loads((folder / "metrics.json").read_text())
    expected = copy.deepcopy(metrics["config"])
    del metrics["config"]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    run = next(r for r in load_runs([folder]))
    assert run.config == expected


# ---------------------------------------------- statistics over seeds (report/stats.py, report/comparison.py)


def test_t_quantiles_match_the_table_and_the_expansion():
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)  # beyond the table
    assert t_quantile_975(1000) == pytest.approx(1.9623, abs=2e-4)
    with pytest.raises(ValueError, match="degrees of freedom.*0"):
        t_quantile_975(0)


def test_interval_of_a_mean_is_the_t_interval():
    spread = interval([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(2) = 4.3027
    assert spread.mean == 2.0 and spread.n == 3
    assert spread.half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-5)
    assert (spread.low, spread.high) == pytest.approx((2 - 2.48417, 2 + 2.48417), abs=1e-4)
    one = interval([5.0])
    assert one.mean == 5.0 and math.isnan(one.half) and not one.excludes_zero
    assert interval([]).n == 0


def test_paired_difference_uses_common_seeds_and_counts_wins_and_ties():
    method = {0: 0.5, 1: 0.6, 2: 0.7}
    reference = {0: 0.6, 1: 0.6, 2: 0.8, 3: 0.9}  # seed 3 has no partner
    result = paired(method, reference, higher_is_better=True)
    # differences -0.1, 0, -0.1: mean -1/15, sample std 1/(10 sqrt 3), half = 4.3027 / 30 = 0.143423
    assert result.n == 3 and result.reference_better == 2 and result.ties == 1
    assert result.difference.mean == pytest.approx(-1 / 15)
    assert result.difference.half == pytest.approx(4.3027 / 30, rel=1e-4)
    assert not result.difference.excludes_zero
    lower_better = paired({0: 2.0, 1: 2.1}, {0: 1.0, 1: 1.0}, higher_is_better=False)
    assert lower_better.reference_better == 2 and lower_better.difference.excludes_zero


def seeded_runs(root: Path) -> Path:
    # MIMMO beats MIMO by 0.10 accuracy on every seed (+-0.01), three seeds; Base has only seeds 0 and 1
    for seed, (a_mimo, a_mimmo) in enumerate([(0.50, 0.60), (0.52, 0.61), (0.48, 0.59)]):
        write_run(root / f"mimo{seed}", "mimo", 2, seed, results(a_mimo, 2.0, 0.2, 0.008), 0.2, 1, 1)
        write_run(root / f"mimmo{seed}", "mimmo", 2, seed, results(a_mimmo, 1.5, 0.1, 0.006), 0.3, 1, 1,
                  num_exits=4)
    for seed in (0, 1):
        write_run(root / f"base{seed}", "base", 1, seed, results(0.45, 2.5, 0.3, 0.009), 0.1, 1, 1)
    return root


def test_report_writes_per_seed_csv_and_paired_comparison(tmp_path: Path):
    text = report([seeded_runs(tmp_path / "runs")], tmp_path / "out", figures=False)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "per_seed.csv").read_text())))
    assert len(rows) == 8  # every run once
    mimo1 = next(r for r in rows if r["method"] == "mimo" and r["seed"] == "1")
    assert float(mimo1["test_accuracy"]) == pytest.approx(0.52) and mimo1["run"] == "mimo1"
    assert float(mimo1["shifted_nll"]) == pytest.approx(4.0)  # the fabricated shifted mean: 2 x NLL
    comparison = (tmp_path / "out" / "comparison.md").read_text()
    assert "Against **MIMMO**" in comparison
    # MIMO - MIMMO accuracy: -0.10, -0.09, -0.11 -> mean -0.100, half 4.3027 * 0.01 / sqrt(3) = 0.0248
    assert "| MIMO | **-0.100 [-0.125, -0.075]** 3/3 |" in comparison
    # Base: two paired seeds: -0.15, -0.16 -> mean -0.155, half 12.7062 * 0.00707107 / sqrt(2) = 0.0635
    assert "| Base | **-0.155 [-0.219, -0.091]** 2/2 |" in comparison
    # NLL identical on every seed: a difference of +0.500 with no spread, the reference better on 3/3
    assert "**+0.500 [+0.500, +0.500]** 3/3" in comparison
    assert "## Paired comparison over seeds" in text


def test_report_comparison_against_another_reference_and_an_unknown_one(tmp_path: Path):
    runs = seeded_runs(tmp_path / "runs")
    report([runs], tmp_path / "out", figures=False, reference="mimo")
    comparison = (tmp_path / "out" / "comparison.md").read_text()
    assert "Against **MIMO**" in comparison and "| MIMMO | **+0.100 [+0.075, +0.125]** 0/3 |" in comparison
    with pytest.raises(ValueError, match=r"reference method 'dun'.*\['base', 'mimmo', 'mimo'\]"):
        report([runs], tmp_path / "out2", figures=False, reference="dun")


def with_provenance(folder: Path, **record) -> None:
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["provenance"] = {"commit": "a" * 40, "dirty": False, "torch": "2.13.0+cpu", "threads": 1,
                             "device": "cpu", "device_name": None, "machine": "x86_64", **record}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_provenance_header_names_the_runs_that_differ(tmp_path: Path):
    root = seeded_runs(tmp_path / "runs")
    assert "No run records its provenance" in provenance_markdown(load_runs([root]))
    for folder in root.iterdir():
        with_provenance(folder)
    line = provenance_markdown(load_runs([root]))
    assert "All 8 runs: commit aaaaaaaaaa, torch 2.13.0+cpu, 1 thread, cpu, x86_64." in line
    with_provenance(root / "mimo2", threads=2)
    (root / "base1" / "metrics.json").write_text(json.dumps(
        {k: v for k, v in json.loads((root / "base1" / "metrics.json").read_text()).items() if k != "provenance"}))
    text = report([root], tmp_path / "out", figures=False)
    assert "The 8 runs differ in where they were computed:" in text
    assert "- 6 runs: commit aaaaaaaaaa, torch 2.13.0+cpu, 1 thread, cpu, x86_64: the others" in text
    assert "- 1 run: commit aaaaaaaaaa, torch 2.13.0+cpu, 2 threads, cpu, x86_64: `mimo2`" in text
    assert "- 1 run: no provenance recorded (saved before it was): `base1`" in text


def test_the_reference_row_is_the_one_at_the_methods_default_settings(tmp_path: Path):
    """With MIMMO at alpha = 250 and alpha = 1 in one table, the comparison is against alpha = 1 (the default),
    whichever comes first."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root / f"a250_{seed}", "mimmo", 2, seed, results(0.7, 1.0, 0.1, 0.006), 0.3, 1, 1, num_exits=4,
                  method__alpha=250.0)
        write_run(root / f"a1_{seed}", "mimmo", 2, seed, results(0.8, 0.9, 0.1, 0.005), 0.3, 1, 1, num_exits=4)
    report([root], tmp_path / "out", figures=False)
    comparison = (tmp_path / "out" / "comparison.md").read_text()
    assert "Against **MIMMO (α=1)**" in comparison
    assert "| MIMMO (α=250) | **-0.100 [-0.100, -0.100]** 2/2 |" in comparison


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
