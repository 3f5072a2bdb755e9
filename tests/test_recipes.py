"""The training recipes (``train.augment``, ``train.optimizer``, ``train.weight_decay``, ``train.schedule``) and the
refusal of settings that nothing reads."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tiny_runs import (
    assert_close_weights,
    assert_same_weights,
    results,
    tiny,
    train_eagerly_with_a_tensor_learning_rate,
)

from mimmo import training
from mimmo.cli import grid as grids
from mimmo.cli import main as cli_main
from mimmo.cli.demo import run_demo
from mimmo.config import check_known_keys, compose
from mimmo.data.augment import crop_flip, member_views
from mimmo.methods.base import Base
from mimmo.methods.mimo import MIMO
from mimmo.models.resnet import ResNetConfig, ResNetFactory
from mimmo.runs.folder import NON_SEMANTIC_KEYS
from mimmo.training import MethodModule, prepare_run, train, validate_training
from mimmo.training.recipe import build_optimizer, build_schedule

PADDING = 4
FACTORY = ResNetFactory(ResNetConfig(layers=(1, 1), planes=(4, 4), strides=(1, 2), stem_channels=4))


# ------------------------------------------------------------------------------------------ crop and flip


def windows(image: torch.Tensor) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every crop-and-flip of ``image`` (C, H, W), by slicing its zero-padded copy: (dy, dx, flip, window)."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (PADDING,) * 4)
    out = []
    for top in range(2 * PADDING + 1):
        for left in range(2 * PADDING + 1):
            window = padded[:, top:top + height, left:left + width]
            out += [(top - PADDING, left - PADDING, False, window),
                    (top - PADDING, left - PADDING, True, window.flip(-1))]
    return out


@pytest.mark.parametrize("shape", [(6, 3, 10, 12), (4, 2, 1, 9, 9)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_keeps_shape_and_dtype_and_is_reproducible_for_a_seed(shape, dtype):
    images = (torch.rand(shape) * 255).to(dtype)
    first = crop_flip(images, generator=torch.Generator().manual_seed(3))
    second = crop_flip(images, generator=torch.Generator().manual_seed(3))
    other = crop_flip(images, generator=torch.Generator().manual_seed(4))
    assert first.shape == images.shape and first.dtype == dtype
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_crop_flip_is_a_window_of_the_zero_padded_image_perhaps_mirrored():
    images = torch.randint(1, 256, (12, 3, 8, 10), dtype=torch.uint8)  # no zero inside: padding is visible
    out = crop_flip(images, generator=torch.Generator().manual_seed(0))
    for image, result in zip(images, out, strict=True):
        matches = [(dy, dx, flip) for dy, dx, flip, window in windows(image) if torch.equal(window, result)]
        assert len(matches) == 1, matches


def test_crop_offsets_cover_minus_4_to_4_uniformly_and_half_the_images_are_flipped():
    """Read each image's shift and flip off its pixels (pixel (i, j) holds 1 + i*W + j): 18000 draws."""
    count, size = 18000, 16
    image = (1 + torch.arange(size * size, dtype=torch.float64)).view(1, 1, size, size)
    out = crop_flip(image.expand(count, -1, -1, -1), generator=torch.Generator().manual_seed(1))
    centre = size // 2  # never in the padding: |shift| <= 4 < 8
    value = out[:, 0, centre, centre].long() - 1
    flipped = out[:, 0, centre, centre + 1] < out[:, 0, centre, centre]
    dy = value // size - centre
    dx = torch.where(flipped, value % size - (size - 1 - centre), value % size - centre)
    assert abs(flipped.double().mean().item() - 0.5) < 4 * 0.5 / math.sqrt(count)
    for shift in (dy, dx):
        counts = torch.bincount(shift + PADDING, minlength=2 * PADDING + 1).double()
        assert counts.numel() == 2 * PADDING + 1  # nothing outside -4..4
        expected = count / (2 * PADDING + 1)
        chi_square = float(((counts - expected) ** 2 / expected).sum())
        assert chi_square < 26.1  # 8 degrees of freedom, p = 0.001


def test_crop_flip_compiles_as_one_graph():
    compiled = torch.compile(crop_flip, fullgraph=True, backend="aot_eager")
    images = torch.randint(0, 256, (4, 2, 3, 8, 8), dtype=torch.uint8)
    assert compiled(images).shape == images.shape
    torch._dynamo.reset()


def test_crop_flip_refuses_what_is_not_an_image():
    with pytest.raises(ValueError, match=r"crop_flip takes images \(\.\.\., C, H, W\), got shape \(4, 5\)"):
        crop_flip(torch.zeros(4, 5))


def tiny_mimo(input_repetition: float) -> MIMO:
    return MIMO(FACTORY, 3, 5, num_members=3, repetitions=2, input_repetition=input_repetition)


def test_every_member_reads_its_own_view_of_a_sample():
    """Views of a sample are copies until augmented; member m reads view m. With rho = 1 every member receives the
    same sample: un-augmented views give exactly the plain batch, augmented ones a different crop per member."""
    method = tiny_mimo(input_repetition=1.0)
    x, y = torch.randint(1, 256, (8, 3, 12, 12), dtype=torch.uint8), torch.arange(8)
    torch.manual_seed(0)
    plain, plain_targets = method.training_batch(x, y)
    views, view_labels = member_views(x, y, 3)
    assert views.shape == (8, 3, 3, 12, 12) and view_labels.shape == (8, 3)
    torch.manual_seed(0)
    same, same_targets = method.training_batch(views, view_labels)
    assert torch.equal(same, plain) and torch.equal(same_targets, plain_targets)
    augmented_views = crop_flip(views)
    torch.manual_seed(0)
    augmented, targets = method.training_batch(augmented_views, view_labels)
    assert torch.equal(targets, plain_targets) and (targets == targets[:, :1]).all()  # rho = 1: one sample per row
    members = augmented.unflatten(1, (3, 3))
    differ = [not torch.equal(members[row, a], members[row, b]) for row in range(16) for a, b in ((0, 1), (1, 2))]
    assert sum(differ) >= 30  # two members draw the same crop and flip with probability 1/162


def test_a_batch_of_views_must_have_one_per_member():
    method = tiny_mimo(input_repetition=0.25)
    with pytest.raises(ValueError, match=r"mimo takes one view per member: x \(B, 3, C, \.\.\.\)"):
        method.training_batch(torch.zeros(4, 2, 3, 8, 8), torch.zeros(4, 2, dtype=torch.long))


# --------------------------------------------------------------------------------- the paper's recipe kept


def paper_recipe_before(self) -> dict:
    """``configure_optimizers`` as it was before the recipes became options (the paper's: Adam, cosine)."""
    optimizer = torch.optim.Adam(self.method.parameters(), lr=self.train_cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.train_cfg.epochs, eta_min=0.0)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


@pytest.mark.parametrize("method", ["mimo", "ensemble"])
def test_the_default_recipe_computes_exactly_what_it_did_before(tmp_path, method):
    """Adam, cosine, no augmentation (batches prepared as before): the same weights and metrics to the bit."""
    default = train(tiny(f"method={method}"), tmp_path / "default")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodModule, "configure_optimizers", paper_recipe_before)
        patch.setattr(MethodModule, "prepare_training", MethodModule.prepare)
        before = train(tiny(f"method={method}"), tmp_path / "before")
    assert_same_weights(tmp_path / "default", tmp_path / "before")
    assert results(default) == results(before)


# ----------------------------------------------------------------------------------- augmentation in training


@pytest.mark.parametrize("method", ["mimo", "ensemble"])
def test_a_crop_flip_run_is_reproducible_for_a_seed_and_differs_from_none(tmp_path, method):
    first = train(tiny(f"method={method}", "train.augment=crop_flip"), tmp_path / "first")
    second = train(tiny(f"method={method}", "train.augment=crop_flip"), tmp_path / "second")
    none = train(tiny(f"method={method}"), tmp_path / "none")
    assert_same_weights(tmp_path / "first", tmp_path / "second")
    assert results(first) == results(second) and results(first) != results(none)


def test_augmentation_is_for_training_batches_only(tmp_path, monkeypatch):
    """Every training batch passes the augmentation (one view per member for MIMO); validation never does."""
    seen: list[tuple[int, ...]] = []

    def recording_crop_flip(images, padding=PADDING, generator=None):
        seen.append(tuple(images.shape))
        return crop_flip(images, padding, generator)

    monkeypatch.setattr(training.module, "augmentation",
                        lambda name: recording_crop_flip if name == "crop_flip" else None)
    train(tiny("method=mimo", "train.augment=crop_flip"), tmp_path)
    assert seen == [(32, 2, 1, 28, 28)] * 16  # 2 epochs of 8 batches of 32 images, 2 members


def test_the_graphed_step_augments_afresh_at_every_replay(tmp_path, recording):  # noqa: F811
    """The augmentation is inside the captured step: a graphed run trains as the eager one, to the bit."""
    overrides = ["method=mimo", "train.augment=crop_flip"]
    graphed = train(tiny(*overrides, "train.cuda_graphs=true"), tmp_path / "graphed")
    assert recording[0].replays > 0
    eager = train_eagerly_with_a_tensor_learning_rate(tiny(*overrides), tmp_path / "eager")
    assert_close_weights(tmp_path / "graphed", tmp_path / "eager")
    assert graphed["test"] == eager["test"]


# --------------------------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize(("overrides", "kind", "expected"), [
    ([], torch.optim.Adam, {"lr": 0.005, "weight_decay": 0.0}),
    (["train.weight_decay=0.01"], torch.optim.Adam, {"lr": 0.005, "weight_decay": 0.01}),
    (["train.optimizer=sgd", "train.lr=0.1", "train.weight_decay=5e-4"], torch.optim.SGD,
     {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}),
    (["train.optimizer=sgd", "train.momentum=0.5", "train.nesterov=true"], torch.optim.SGD,
     {"lr": 0.005, "momentum": 0.5, "nesterov": True, "weight_decay": 0.0}),
])
def test_the_optimiser_is_the_configured_one(overrides, kind, expected):
    cfg = tiny(*overrides)
    validate_training(cfg)
    optimizer = build_optimizer(Base(FACTORY, 3, 5), cfg.train)
    assert type(optimizer) is kind and len(optimizer.param_groups) == 1
    assert {key: optimizer.param_groups[0][key] for key in expected} == expected


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_mimmos_depth_logits_get_no_weight_decay(weight_decay):
    """theta's logits are regularised by the KL to the prior; every other parameter decays."""
    method = training.build_method_from_config(tiny(f"train.weight_decay={weight_decay}"), (1, 28, 28), 10)
    optimizer = build_optimizer(method, tiny(f"train.weight_decay={weight_decay}").train)
    decays = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decays) == len(list(method.parameters()))
    assert decays[id(method.depth_logits)] == 0.0
    assert {d for key, d in decays.items() if key != id(method.depth_logits)} == {weight_decay}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_changes_training(tmp_path, optimizer):
    plain = train(tiny("method=base", f"train.optimizer={optimizer}"), tmp_path / "plain")
    decayed = train(tiny("method=base", f"train.optimizer={optimizer}", "train.weight_decay=0.5"), tmp_path / "decay")
    assert results(plain) != results(decayed)
    norms = [sum(float(w.norm()) for k, w in load_file(str(tmp_path / run / "weights.safetensors")).items()
                 if k.endswith("weight")) for run in ("plain", "decay")]
    assert norms[1] < norms[0]  # the decay pulls the weights towards 0


def test_an_sgd_run_with_a_step_schedule_resumes_exactly(tmp_path):
    """Cut off in its second epoch and started again (momentum buffers, schedule state from the checkpoint): the
    same weights as an uninterrupted run."""
    overrides = ["method=mimo", "train.optimizer=sgd", "train.lr=0.05", "train.nesterov=true",
                 "train.weight_decay=1e-4", "train.schedule=step", "train.milestones=[1]", "train.epochs=3"]
    reference = train(tiny(*overrides), tmp_path / "reference")
    original = MethodModule.training_step

    class CutOff(Exception):
        pass

    def cut(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 3:
            raise CutOff
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodModule, "training_step", cut)
        with pytest.raises(CutOff):
            train(tiny(*overrides), tmp_path / "resumed")
    resumed = train(tiny(*overrides), tmp_path / "resumed")
    assert_same_weights(tmp_path / "reference", tmp_path / "resumed")
    assert results(resumed) == results(reference)


def test_sgd_steps_are_not_captured_as_cuda_graphs(tmp_path, recording):  # noqa: F811
    """torch's SGD update reads a tensor learning rate on the host: auto trains SGD eagerly, true is refused."""
    train(tiny("method=base", "train.optimizer=sgd", "train.epochs=1", "train.warm_start_epochs=0"), tmp_path / "auto")
    assert recording == []  # no graph backend was made
    with pytest.raises(ValueError, match=r"train\.cuda_graphs=true needs train\.optimizer=adam .*got "
                                         r"train\.optimizer=sgd; use train\.cuda_graphs=auto"):
        train(tiny("train.optimizer=sgd", "train.cuda_graphs=true"), tmp_path / "true")


# --------------------------------------------------------------------------------------------- schedules


def learning_rates(monkeypatch, cfg, run_dir) -> list:
    seen = []
    original = MethodModule.on_train_epoch_end

    def record(self):
        lr = self.optimizers().optimizer.param_groups[0]["lr"]
        seen.append((lr, float(lr)))  # the value now: a tensor learning rate is overwritten in place
        original(self)

    monkeypatch.setattr(MethodModule, "on_train_epoch_end", record)
    train(cfg, run_dir)
    return seen


@pytest.mark.parametrize("graphs", ["false", "true"])
def test_the_step_schedule_multiplies_the_rate_at_each_milestone(tmp_path, monkeypatch, recording, graphs):  # noqa: F811
    """lr at epoch e = lr * decay^(milestones <= e); in a graphed run the one lr tensor is overwritten in place."""
    cfg = tiny("method=mimo", "train.epochs=5", "train.schedule=step", "train.milestones=[1,3]",
               "train.lr_decay=0.5", f"train.cuda_graphs={graphs}")
    seen = learning_rates(monkeypatch, cfg, tmp_path)
    values = [value for _, value in seen]
    assert values == pytest.approx([0.005 * 0.5 ** sum(m <= e for m in (1, 3)) for e in range(5)], rel=1e-6)
    if graphs == "true":
        assert isinstance(seen[0][0], torch.Tensor) and all(lr is seen[0][0] for lr, _ in seen)


def test_build_schedule_follows_the_milestones_to_the_end():
    cfg = tiny("train.epochs=10", "train.schedule=step", "train.milestones=[2,5,9]", "train.lr_decay=0.1",
               "train.lr=1.0")
    optimizer = build_optimizer(Base(FACTORY, 3, 5), cfg.train)
    schedule = build_schedule(optimizer, cfg.train)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert rates == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001], rel=1e-12)


# -------------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(("overrides", "match"), [
    (["train.augment=flip"], r"train\.augment must be one of none, crop_flip, got 'flip'"),
    (["train.optimizer=rmsprop"], r"train\.optimizer must be one of adam, sgd, got 'rmsprop'"),
    (["train.schedule=linear"], r"train\.schedule must be one of cosine, step, got 'linear'"),
    (["train.momentum=-0.1"], r"train\.momentum must be a finite number >= 0, got -0\.1"),
    (["train.weight_decay=-1"], r"train\.weight_decay must be a finite number >= 0, got -1"),
    (["train.weight_decay=abc"], r"train\.weight_decay must be a finite number >= 0, got 'abc'"),
    (["train.lr_decay=0"], r"train\.lr_decay must be a number in \(0, 1\], got 0"),
    (["train.lr_decay=1.5"], r"train\.lr_decay must be a number in \(0, 1\], got 1\.5"),
    (["train.nesterov=yes"], r"train\.nesterov must be true or false, got 'yes'"),
    (["train.nesterov=true"], r"train\.nesterov=true is Nesterov momentum for train\.optimizer=sgd .*"
                              r"got train\.optimizer=adam"),
    (["train.optimizer=sgd", "train.nesterov=true", "train.momentum=0"], r"train\.momentum > 0; .*momentum=0"),
    (["train.schedule=step", "train.milestones=[0]"],
     r"train\.milestones must be a strictly increasing list of epochs in 1\.\.1 \(train\.epochs - 1\), got \[0\]"),
    (["train.schedule=step", "train.milestones=[2]"], r"train\.milestones .* in 1\.\.1 .*got \[2\]"),
    (["train.schedule=step", "train.epochs=5", "train.milestones=[3,2]"], r"strictly increasing .*got \[3, 2\]"),
    (["train.schedule=step", "train.epochs=5", "train.milestones=[2,2]"], r"strictly increasing .*got \[2, 2\]"),
    (["train.schedule=step", "train.epochs=5", "train.milestones=[1.5]"], r"strictly increasing .*got \[1\.5\]"),
    (["train.schedule=step", "train.milestones=3"], r"strictly increasing list .*got 3"),
    (["train.milestones=[1]"], r"train\.milestones \(\[1\]\) are for train\.schedule=step; train\.schedule is "
                               r"'cosine'"),
])
def test_bad_recipe_values_are_refused_before_training(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train(tiny(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- settings nothing reads


UNREAD = [("+train.weight_decay2=0.5", "train.weight_decay2", "the train settings are accelerator, augment, "),
          ("+data.foo=1", "data.foo", "the data settings are .*name, root, test_fraction, train_size, "
                                      "validation_fraction"),
          ("+method.bar=2", "method.bar", "the method settings are alpha, input_repetition, kl_convention, name, "),
          ("+model.x=1", "model.x", "the model settings are layers, name, planes, stem_channels, strides, width"),
          ("+foo=1", "foo", "the top-level settings are data, evaluation, method, model, output_dir, seed, train"),
          ("+evaluation.bins=15", "evaluation.bins",
           "the evaluation settings are calibrate, ood, ood_sets, prune_exits, shifted")]


@pytest.mark.parametrize(("override", "key", "allowed"), UNREAD)
def test_a_setting_nothing_reads_is_refused_by_the_library(tmp_path, override, key, allowed):
    with pytest.raises(ValueError, match=rf"^unknown setting {key} \(nothing reads it\); {allowed}"):
        prepare_run(tiny(override))
    with pytest.raises(ValueError, match=rf"unknown setting {key} "):
        train(tiny(override), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "key", "allowed"), UNREAD[:2] + UNREAD[4:5])
def test_a_setting_nothing_reads_is_refused_by_mimmo_train_and_the_grid_dry_run(tmp_path, capsys, override, key,
                                                                                allowed):
    for command in (["train", *[f"{o}" for o in ("method=base", "train.epochs=1", "data.train_size=64")]],
                    ["grid", "paper_mini", "--dry-run"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main([*command, override, f"output_dir={tmp_path}"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(rf"unknown setting {key} \(nothing reads it\); {allowed}", err)
    assert not any(tmp_path.iterdir())


def test_a_setting_nothing_reads_is_refused_by_the_demo(tmp_path):
    with pytest.raises(ValueError, match=r"the demo's \w+ run: unknown setting train\.weight_decay2"):
        run_demo(tmp_path, extra_overrides=["+train.weight_decay2=0.5"])
    assert not any(tmp_path.iterdir())


def test_a_plus_override_of_a_declared_key_is_hydras_refusal_and_double_plus_sets_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "+train.weight_decay=0.5", f"output_dir={tmp_path}"])
    assert exit_.value.code == 2 and "train.weight_decay" in capsys.readouterr().err
    cfg = compose(["++train.weight_decay=0.5"])
    check_known_keys(cfg)
    assert cfg.train.weight_decay == 0.5


@pytest.mark.parametrize("overrides", [
    [], ["experiment=fast"], ["experiment=paper_mini", "method=mixmo"], ["experiment=paper", "model=wrn"],
    ["data=cifar10", "model=resnet18", "method=ensemble"], ["model=mlp", "method=dun"], ["train=fast"],
    ["data=folder", "data.root=/somewhere", "data.size=[16,8]"], ["train.optimizer=sgd", "train.milestones=[50]",
                                                                   "train.schedule=step", "method.prior=[0.25,0.75]"],
])
def test_declared_settings_pass(overrides):
    check_known_keys(compose(overrides))


def test_a_section_without_a_config_file_is_its_registrys_to_check():
    """A method (or backbone, dataset) registered from Python has no configs/<group>/<name>.yaml to compare with."""
    cfg = compose([])
    OmegaConf.update(cfg, "method", {"name": "my_method", "anything": 1}, merge=False)
    check_known_keys(cfg)
    OmegaConf.update(cfg, "train.anything", 1, force_add=True)
    with pytest.raises(ValueError, match=r"unknown setting train\.anything"):
        check_known_keys(cfg)


# ------------------------------------------------------------------------------------------- around them


def test_the_recipe_options_name_the_run_folder(tmp_path):
    """They change what a run computes: each is part of the folder name (none is a non-semantic key)."""
    options = ["train.augment=crop_flip", "train.optimizer=sgd", "train.momentum=0.5", "train.nesterov=true",
               "train.weight_decay=0.1", "train.schedule=step", "train.milestones=[1]", "train.lr_decay=0.5"]
    assert not {option.split("=")[0] for option in options} & set(NON_SEMANTIC_KEYS)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"description": "recipes", "sweeps": [
        ["method=base", f"output_dir={tmp_path}", option] for option in options]}))
    folders = [run.folder.name for runs in grids.plan(grids.load_grid(str(path))) for run in runs]
    assert folders == [f"method=base,{option}" for option in options]  # booleans as typed: one spelling


def test_a_flat_input_backbone_trains_on_augmented_member_views(tmp_path):
    """The MLP flattens after the augmentation: crops and flips are of the images, per member view."""
    cfg = compose(["model=mlp", "model.hidden=[8,8]", "model.stem_features=8", "method=mimo", "data.train_size=64",
                   "train.epochs=1", "train.batch_size=16", "train.progress_bar=false", "evaluation.shifted=false",
                   "evaluation.calibrate=false", "train.augment=crop_flip"])
    metrics = train(cfg, tmp_path)
    assert math.isfinite(metrics["test"]["nll"])


def test_compose_and_the_key_check_work_inside_a_running_hydra_application():
    """A job of a --multirun sweep runs inside Hydra: composing the reference config there must not disturb it."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from mimmo.config import CONFIG_DIR

    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        outer = GlobalHydra.instance()
        cfg = compose(["method=early_exit", "model=resnet18", "data=cifar10", "train=fast"])
        check_known_keys(cfg)
        assert GlobalHydra.instance() is outer and outer.is_initialized()
        assert hydra.compose(config_name="config", overrides=["method=dun"]).method.name == "dun"
