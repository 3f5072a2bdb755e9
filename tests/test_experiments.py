"""The experiment machinery: paper configs and grids, `mimmo grid` (joblib launcher, restart, resume), DDP on CPU
(gloo), mixed precision and channels-last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mimmo.cli import grid as grids
from mimmo.cli import main as cli_main
from mimmo.config import compose
from mimmo.training import MethodModule, load_splits, train, trainer_strategy

TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4", "data.train_size=128",
        "train.epochs=1", "train.batch_size=32", "train.progress_bar=false", "evaluation.shifted=false",
        "train.threads=1"]
PAPER_GRIDS = {"paper_tables": 66, "paper_alpha": 63, "paper_depth_width": 36}
ALL_GRIDS = {**PAPER_GRIDS, "paper_mini": 50, "paper_mini_noisy": 30, "paper_mini_alpha": 12, "paper_mini_noisy50": 50,
             "paper_mini_noisy50_alpha": 12, "paper_mini_members": 33, "paper_mini_depth_width": 12,
             "paper_mini_kl": 12, "paper_mini_ensembles": 10, "paper_mini_ood": 30}
TEN_METHODS = {"base", "ensemble", "mc_dropout", "dun", "early_exit", "mimo", "datamux", "mixmo", "mimmo_gamma",
               "mimmo"}


def write_grid(path: Path, *sweeps: list[str]) -> Path:
    path.write_text(yaml.safe_dump({"description": "a test grid", "sweeps": [list(s) for s in sweeps]}))
    return path


def file_states(folders: list[Path]) -> dict[Path, tuple[int, bytes]]:
    return {f / "metrics.json": ((f / "metrics.json").stat().st_mtime_ns, (f / "metrics.json").read_bytes())
            for f in folders}


# --- configs and grids ---------------------------------------------------------------------------------------


def test_paper_experiment_is_the_papers_setting():
    cfg = compose(["experiment=paper"])
    assert cfg.data.name == "cifar100" and cfg.model.layers == [1, 2, 3, 1] and cfg.model.width == 1
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.warm_start_epochs) == (100, 64, 0.005, 5)
    assert cfg.method.repetitions == 2 and cfg.method.input_repetition == 0.25 and cfg.method.alpha == 1.0
    assert cfg.output_dir == "runs/paper"


def test_the_demo_trains_the_clean_miniature_regime():
    """The demo's three runs have the settings of paper_mini's seed-0 runs (docs/results.md's clean regime): only
    the overfitting curves (training split, validation every 5 epochs) and the output folder differ. (Their
    numbers differ a little: the demo trains with torch's default threads, the grid with one.)"""
    from mimmo.training import semantic_config

    for chosen in (["method=base"], ["method=mimo", "method.num_members=2"], ["method=mimmo", "method.num_members=2"]):
        demo, mini = (compose([f"experiment={name}", *chosen, "seed=0"]) for name in ("demo", "paper_mini"))
        assert (demo.train.track_train, mini.train.track_train) == (False, True)
        assert demo.train.val_every_n_epochs > demo.train.epochs == 50 and demo.output_dir == "runs/demo"
        for cfg in (demo, mini):
            del cfg.train.track_train, cfg.train.val_every_n_epochs  # logging only: every epoch's draws are seeded
        assert semantic_config(demo) == semantic_config(mini)


def test_every_grid_run_composes_and_validates():
    """Every combination of every grid composes, has its own folder and builds (full-size models, each distinct
    (method, M, model) once), without training."""
    planned = {name: grids.plan(grids.load_grid(name)) for name in grids.available_grids()}
    assert {name: sum(map(len, sweeps)) for name, sweeps in planned.items()} == ALL_GRIDS
    built = grids.validate([runs for sweeps in planned.values() for runs in sweeps])
    # tables, Fig. 6's three other models x M, the four miniatures (data; paper_mini_ood's five classes), the
    # miniature's M = 4 and 8, its Fig. 6, the efficient ensembles in miniature
    assert built == 22 + 9 + 10 + 10 + 10 + 10 + 11 + 3 + 2
    runs = {name: [run for runs in sweeps for run in runs] for name, sweeps in planned.items()}
    for grid_runs in runs.values():
        assert len({run.folder for run in grid_runs}) == len(grid_runs)
    tables = runs["paper_tables"]
    assert {r.config.method.name for r in tables} == TEN_METHODS
    assert all(r.config.data.name == "cifar100" and r.config.train.epochs == 100 for r in tables)
    with_m = {(r.config.method.name, r.config.method.num_members) for r in tables if "num_members" in r.config.method}
    assert with_m == {(m, k) for m in TEN_METHODS - {"base", "mc_dropout", "dun", "early_exit"} for k in (2, 4, 8)}
    assert {r.config.seed for r in tables} == {0, 1, 2}
    alphas = {(r.config.method.num_members, r.config.method.alpha) for r in runs["paper_alpha"]}
    assert alphas == {(m, a) for m in (2, 4, 8) for a in (0, 1, 100, 1e4, 4.5e4, 1e5, 1e6)}
    shapes = {(r.config.method.num_members, tuple(r.config.model.layers), r.config.model.width)
              for r in runs["paper_depth_width"]}
    assert shapes == {(m, l, w) for m in (2, 4, 8) for l in ((1, 2, 3, 1), (2, 4, 6, 2)) for w in (1, 2)}
    assert all(r.config.method.name == "mimmo" and r.config.method.alpha == 1 for r in runs["paper_depth_width"])
    # The figures' default points are the tables' MIMMO runs: same folders, trained once.
    table_folders = {r.folder for r in tables}
    shared = {r.folder for name in ("paper_alpha", "paper_depth_width") for r in runs[name]} & table_folders
    assert len(shared) == 9 and all("method=mimmo," in f.name for f in shared)
    mini = runs["paper_mini"]
    assert {r.config.method.name for r in mini} == TEN_METHODS and {r.config.seed for r in mini} == set(range(5))
    assert all(r.config.data.name == "embedded" and r.config.method.get("num_members", 2) == 2 for r in mini)
    assert all(r.config.data.label_noise == 0 and r.config.train.batch_size == 16 for r in mini)
    noisy = runs["paper_mini_noisy"]
    assert {r.config.method.name for r in noisy} == TEN_METHODS and {r.config.seed for r in noisy} == {0, 1, 2}
    assert all(r.config.data.label_noise == 0.3 for r in noisy)
    noisy50 = runs["paper_mini_noisy50"]
    assert {r.config.method.name for r in noisy50} == TEN_METHODS and {r.config.seed for r in noisy50} == set(range(5))
    assert all(r.config.data.label_noise == 0.5 for r in noisy50)
    assert not {r.folder.parent for r in noisy50} & {r.folder.parent for r in noisy}  # 30% runs never skipped as 50%
    members = runs["paper_mini_members"]
    assert {(r.config.method.name, r.config.method.num_members) for r in members} == \
        {(m, 4) for m in ("ensemble", "mimo", "datamux", "mixmo", "mimmo_gamma", "mimmo")} | \
        {(m, 8) for m in ("mimo", "datamux", "mixmo", "mimmo_gamma", "mimmo")}
    depth_width = runs["paper_mini_depth_width"]
    assert {(tuple(r.config.model.layers), r.config.model.width) for r in depth_width} == \
        {(l, w) for l in ((1, 2, 3, 1), (2, 4, 6, 2)) for w in (0.25, 0.5)}
    assert len({r.folder for r in depth_width} & {r.folder for r in mini}) == 3  # the default: paper_mini's MIMMO
    kl = runs["paper_mini_kl"]
    assert {(r.config.data.label_noise, r.config.method.alpha, r.config.method.kl_convention) for r in kl} == \
        {(noise, a, c) for noise in (0.0, 0.5) for a, c in ((250, "paper"), (1, "authors"))}
    # Fig. 5 in miniature: alpha = 1 is the noisy grid's MIMMO runs (same folders, trained once)
    for alpha_grid, ten in (("paper_mini_alpha", noisy), ("paper_mini_noisy50_alpha", noisy50)):
        alpha = runs[alpha_grid]
        assert {(r.config.method.alpha, r.config.seed) for r in alpha} == {(a, s) for a in (0, 1, 100, 250)
                                                                           for s in (0, 1, 2)}
        assert {r.config.data.label_noise for r in alpha} == {ten[0].config.data.label_noise}
        assert len({r.folder for r in alpha} & {r.folder for r in ten}) == 3


def test_overrides_replace_a_sweeps_key_and_excluded_keys_cannot_be_swept(tmp_path):
    sweep = ["method=mimo,mimmo", "seed=0,1,2"]
    assert grids.with_overrides(sweep, ["seed=0", "hydra/launcher=joblib"]) == \
        ["method=mimo,mimmo", "seed=0", "hydra/launcher=joblib"]
    # a method option goes only to the sweeps whose methods all have it; a mixed sweep is refused
    assert grids.with_overrides(["method=mimmo", "seed=0"], ["method.kl_convention=authors"])[-1] == \
        "method.kl_convention=authors"
    assert grids.with_overrides(["method=base,dun", "seed=0"], ["method.kl_convention=authors"]) == \
        ["method=base,dun", "seed=0"]
    with pytest.raises(ValueError, match=r"applies to method\(s\) \['mimmo'\] but not to \['mimo'\]"):
        grids.with_overrides(sweep, ["method.kl_convention=authors"])
    typo = write_grid(tmp_path / "typo.yaml", ["method=mimmo", "seed=0"])
    with pytest.raises(ValueError, match=r"no method of grid 'typo' \(\['mimmo'\]\) has the option 'kl_conv'"):
        grids.plan(grids.load_grid(str(typo)), ["method.kl_conv=authors"])
    assert len(grids.expand(grids.with_overrides(sweep, ["seed=0"]))) == 2
    path = write_grid(tmp_path / "bad.yaml", ["method=base", "train.devices=1,2", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="share the folder"):
        grids.plan(grids.load_grid(str(path)))
    with pytest.raises(ValueError, match="unknown grid"):
        grids.load_grid("no_such_grid")


def test_grid_list_and_dry_run_print_the_sweeps(tmp_path, capsys):
    cli_main(["grid", "--list"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in ALL_GRIDS) and "66 runs" in listed
    path = write_grid(tmp_path / "tiny.yaml", ["method=base,mimo", *TINY, f"output_dir={tmp_path / 'runs'}"],
                      ["method=early_exit", *TINY, f"output_dir={tmp_path / 'runs'}"])
    cli_main(["grid", str(path), "--dry-run", "seed=3"])
    out = capsys.readouterr().out
    assert "2 sweeps, 3 runs in 3 folders" in out and "3 distinct methods built" in out and "nothing trained" in out
    assert "(2 runs: 0 finished, 0 to resume, 2 new): mimmo train --multirun method=base,mimo" in out
    assert "seed=3" in out and not (tmp_path / "runs").exists()


# --- running grids ---------------------------------------------------------------------------------------------


def test_grid_runs_in_parallel_with_joblib_and_a_second_start_skips_finished_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    path = write_grid(tmp_path / "two.yaml", ["method=base", "seed=0,1", *TINY, f"output_dir={runs}"])
    planned = [run.folder for sweep in grids.plan(grids.load_grid(str(path))) for run in sweep]
    cli_main(["grid", str(path), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert "running sweep 1/1: mimmo train --multirun method=base seed=0,1" in capsys.readouterr().out
    folders = sorted(p.parent for p in runs.glob("*/metrics.json"))
    assert folders == sorted(planned) and len(folders) == 2
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["method"] == "base" and 0 <= metrics["test"]["accuracy"] <= 1
    before = file_states(folders)
    # Started again (here with the basic launcher and another thread count: same folders), both are skipped.
    cli_main(["grid", str(path), "train.threads=2"])
    assert file_states(folders) == before
    assert sorted(p.parent for p in runs.glob("*/metrics.json")) == folders


def test_a_cut_off_grid_resumes_from_the_last_checkpoint(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    # Validation every 2nd epoch: the checkpoint is still written after every epoch.
    sweep = ["method=mimmo", "train.warm_start_epochs=1", *TINY, "train.epochs=2", "train.val_every_n_epochs=2",
             f"output_dir={runs}"]
    path = write_grid(tmp_path / "resume.yaml", sweep)
    original = MethodModule.on_train_epoch_start
    epochs_started: list[int] = []

    def cut_off_at_epoch_1(self):
        if self.current_epoch == 1:
            raise RuntimeError("cut off")
        original(self)

    monkeypatch.setattr(MethodModule, "on_train_epoch_start", cut_off_at_epoch_1)
    with pytest.raises(SystemExit):
        cli_main(["grid", str(path)])
    [[run]] = grids.plan(grids.load_grid(str(path)))
    assert run.status == "partial" and not (run.folder / "metrics.json").exists()
    assert torch.load(run.folder / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    def record(self):
        epochs_started.append(self.current_epoch)
        original(self)

    monkeypatch.setattr(MethodModule, "on_train_epoch_start", record)
    cli_main(["grid", str(path)])
    assert epochs_started == [1]  # resumed: epoch 0 was not trained again
    assert run.status == "finished"
    metrics = json.loads((run.folder / "metrics.json").read_text())
    assert len(metrics["exit_weights_history"]) == 2  # epoch 0's from the checkpoint, epoch 1's from the resume
    log = (run.folder / "log" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1", "1"]  # training rows, validation at epoch 1


# --- beyond one process: DDP on CPU (gloo) ---------------------------------------------------------------------


def test_strategy_finds_unused_parameters_under_ddp():
    def train_cfg(strategy, devices=1, num_nodes=1):
        return compose([f"train.strategy={strategy}", f"train.devices={devices}", f"train.num_nodes={num_nodes}"]).train

    assert trainer_strategy(train_cfg("auto")) == "auto"
    assert trainer_strategy(train_cfg("auto", devices=2)) == "ddp_find_unused_parameters_true"
    assert trainer_strategy(train_cfg("ddp_spawn")) == "ddp_spawn_find_unused_parameters_true"
    assert trainer_strategy(train_cfg("ddp", num_nodes=2)) == "ddp_find_unused_parameters_true"


def check_complete_run(folder: Path, world_size: int, epochs: int, cfg) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    weights = load_file(str(folder / "weights.safetensors"))
    # The final weights are the trained ones: rank 0's, as in its last checkpoint.
    assert set(weights) == set(checkpoint["state_dict"])
    assert all(torch.equal(weights[k], v) for k, v in checkpoint["state_dict"].items())
    # Every rank took its share of every batch: as many steps as one process, the same effective batch.
    batches = len(load_splits(cfg).train) // cfg.train.batch_size
    assert checkpoint["global_step"] == epochs * batches
    assert len(metrics["exit_weights_history"]) == epochs == len(checkpoint["exit_weight_history"])
    assert metrics["exit_weights_history"] == checkpoint["exit_weight_history"]
    assert metrics["config"]["train"]["devices"] == world_size
    for key in ("test", "validation", "cost", "exit_weights", "feature_reuse", "time"):
        assert metrics[key] is not None, key
    assert not list(folder.glob(".*.tmp")) and not list(folder.glob("*.tmp"))
    return metrics


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes_writes_a_complete_run(tmp_path):
    overrides = ["method=mimmo", *TINY, "train.epochs=2", "train.warm_start_epochs=1", "train.accelerator=cpu",
                 "train.devices=2", "train.strategy=ddp_spawn", "train.val_every_n_epochs=2"]
    cfg = compose(overrides)
    metrics = train(cfg, tmp_path / "run")
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    check_complete_run(tmp_path / "run", world_size=2, epochs=2, cfg=cfg)
    # The depth weights were learned after the warm start (epoch 1), and the final ones are recorded.
    assert metrics["exit_weights"] == metrics["exit_weights_history"][-1]


@pytest.mark.slow
def test_ddp_from_the_command_line_reruns_only_its_own_run(tmp_path):
    """strategy=ddp starts rank 1 by running the command again: inside a sweep it must run its own job only."""
    overrides = ["method=mimmo_gamma,mimmo", *TINY, "train.epochs=2", "train.warm_start_epochs=1",
                 "train.accelerator=cpu", "train.devices=2", "train.strategy=ddp", f"output_dir={tmp_path}"]
    result = subprocess.run([sys.executable, "-m", "mimmo.cli", "train", "--multirun", *overrides],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folders = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    assert [f.name.split("method=")[1].split(",")[0] for f in folders] == ["mimmo", "mimmo_gamma"]
    assert len(list(tmp_path.iterdir())) == 3  # the two runs and multirun.yaml: no run of a re-executed sweep
    for folder in folders:
        assert (folder / "train_ddp_process_1.log").exists()  # rank 1 ran in this folder
        cfg = compose([o.replace("method=mimmo_gamma,mimmo", f"method={folder.name.split('method=')[1].split(',')[0]}")
                       for o in overrides])
        check_complete_run(folder, world_size=2, epochs=2, cfg=cfg)


# --- mixed precision, channels-last ----------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["train.precision=bf16-mixed", "train.channels_last=true"])
def test_bf16_mixed_and_channels_last_train(tmp_path, option):
    cfg = compose(["method=mimmo", *TINY, "train.epochs=2", "train.warm_start_epochs=1", option])
    metrics = train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").exists()
    assert torch.isfinite(torch.tensor(metrics["test"]["nll"])) and 0 <= metrics["test"]["accuracy"] <= 1
    assert len(metrics["exit_weights_history"]) == 2


@pytest.mark.parametrize(("setting", "expected"), [("auto", True), ("true", True), ("false", False)])
def test_channels_last_setting_decides_the_layout_of_weights_and_batches(setting, expected):
    """``train.channels_last=auto`` is channels-last on a CPU (where it trains faster); the values never change."""
    from mimmo.data.datasets import Normalizer
    from mimmo.training import build_method_from_config

    cfg = compose(["method=mimo", *TINY, f"train.channels_last={setting}"])
    splits = load_splits(cfg)
    method = build_method_from_config(cfg, splits.input_shape, splits.num_classes)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    module = MethodModule(method, Normalizer.fit(splits.train.images), splits, cfg)
    module.on_fit_start()
    conv = next(m for m in method.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == expected
    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)  # 3 channels: the two layouts differ
    assert module.prepare(batch).is_contiguous(memory_format=torch.channels_last) == expected
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
