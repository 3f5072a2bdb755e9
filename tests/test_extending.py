"""The README's "adding a backbone / dataset / method" steps, followed to the letter: each defined here, registered,
and trained for one epoch through the library API (``mimmo.training.train``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fake_runs import results, write_run
from matplotlib.axes import Axes
from omegaconf import OmegaConf
from torch import Tensor, nn

from mimmo.config import compose
from mimmo.data import DATASETS, DatasetSpec, ImageSet, register_dataset
from mimmo.data.datasets import split_train
from mimmo.evaluation.cost_table import cost_table
from mimmo.methods import LossOutput, Method, Prediction, Progress
from mimmo.methods.registry import METHODS, display_name, register_method
from mimmo.models import BACKBONES, Add, Backbone, register_backbone
from mimmo.models.backbone import check_backbone, check_image_input
from mimmo.report import figures
from mimmo.report.runs import group_runs, load_runs
from mimmo.report.tables import build_tables, row_label
from mimmo.training import train

ONE_EPOCH = ["train.epochs=1", "train.warm_start_epochs=0", "train.batch_size=16", "train.progress_bar=false",
             "evaluation.shifted=false"]


# --------------------------------------------------------------------------------------------- a backbone


class TinyBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.bn, self.relu, self.add = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(
            channels), nn.ReLU(), Add()

    def forward(self, x: Tensor) -> Tensor:
        return self.add(x, self.relu(self.bn(self.conv(x))))


class TinyConvNet(Backbone):
    """Stem conv, two residual stages (the second one strided), pool, head."""

    def __init__(self, in_channels: int, num_outputs: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.stages = nn.ModuleList([TinyBlock(width), nn.Sequential(nn.MaxPool2d(2), TinyBlock(width))])
        self.stage_channels = (width, width)
        self.feature_dim = width
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(width, num_outputs)


class TinyConvNetFactory:
    def __init__(self, width: int = 4) -> None:
        self.width = width

    def __call__(self, in_channels: int, num_outputs: int) -> TinyConvNet:
        return TinyConvNet(in_channels, num_outputs, self.width)

    def input_shape_for(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return check_image_input(data_shape, (1, 2), "tiny_conv")


# --------------------------------------------------------------------------------------------- a dataset


def stripes(data, seed: int):
    """Two classes of 8x8 grey images: horizontal or vertical stripes, with noise."""
    generator = torch.Generator().manual_seed(1234)
    labels = torch.arange(160) % 2
    pattern = (torch.arange(8) % 2 * 200).float()
    images = torch.where(labels[:, None, None] == 0, pattern[:, None].expand(8, 8), pattern[None, :].expand(8, 8))
    images = (images[:, None] + torch.randint(0, 50, (160, 1, 8, 8), generator=generator)).clamp(0, 255)
    full = ImageSet(images.to(torch.uint8), labels)
    index = torch.arange(160)
    return split_train("stripes", full.subset(index[:120]), full.subset(index[120:]), 2,
                       data.get("validation_fraction", 0.2), seed, class_names=("horizontal", "vertical"))


STRIPES = DatasetSpec("stripes", describe=lambda data: ((1, 8, 8), 2), check=lambda data: None, load=stripes)


# ----------------------------------------------------------------------------------------------- a method


class TwoHeads(Method):
    """Two backbones' worth of heads on one trunk: the backbone's head gives 2K outputs, read as two members
    of equal weight, each trained with cross-entropy (a minimal multi-member method)."""

    name = "two_heads"
    # how reports show it; its M (two heads) is not an ensemble size to make tables by (tabulated_by_members=False)
    display_name, colour, marker = "Two heads", "teal", ">"

    def __init__(self, backbone, in_channels: int, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.num_members, self.label_smoothing = num_classes, 2, label_smoothing
        self.backbone = check_backbone(backbone(in_channels, 2 * num_classes))
        self.register_buffer("uniform", torch.ones(1, 2), persistent=False)

    def forward(self, x: Tensor) -> Prediction:
        return Prediction(self.backbone(x).view(len(x), 1, 2, self.num_classes), self.uniform)

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        logits = self.backbone(x).view(len(x), 2, self.num_classes)
        loss = sum(F.cross_entropy(logits[:, m].float(), y, label_smoothing=self.label_smoothing) for m in range(2))
        return LossOutput(loss, {"nll": loss.detach()})


@pytest.fixture
def registered():
    """Register the three for one test, then restore the registries."""
    register_backbone("tiny_conv", TinyConvNetFactory)
    register_dataset(STRIPES)
    register_method(TwoHeads)
    yield
    BACKBONES.pop("tiny_conv")
    DATASETS.pop("stripes")
    METHODS.pop("two_heads")


def config(model: dict, data: dict, method: dict):
    """The default config with the given groups replaced (what configs/<group>/<name>.yaml would hold)."""
    cfg = compose(ONE_EPOCH)
    for key, value in (("model", model), ("data", data), ("method", method)):
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def test_an_added_backbone_trains_under_mimmo(registered, tmp_path):
    cfg = config({"name": "tiny_conv", "width": 4}, {"name": "stripes"},
                 OmegaConf.to_container(compose(["method=mimmo"]).method, resolve=False))
    OmegaConf.update(cfg, "method.warm_start_epochs", 0)
    metrics = train(cfg, tmp_path / "run")
    assert metrics["num_exits"] == 2 and metrics["num_members"] == 2  # an exit after its first stage
    assert metrics["cost"]["flops"] > 0 and 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_an_added_dataset_trains_with_its_class_names(registered, tmp_path):
    cfg = config(OmegaConf.to_container(compose(["model=mlp"]).model), {"name": "stripes"},
                 {"name": "base"})
    metrics = train(cfg, tmp_path / "run")
    assert metrics["dataset"] == "stripes" and metrics["class_names"] == ["horizontal", "vertical"]
    assert metrics["data_shape"] == [1, 8, 8] and metrics["test"]["accuracy"] > 0.9  # stripes are easy


def test_an_added_method_trains_and_joins_the_cost_table(registered, tmp_path):
    cfg = config({"name": "tiny_conv", "width": 4}, {"name": "stripes"}, {"name": "two_heads",
                                                                          "label_smoothing": 0.1})
    metrics = train(cfg, tmp_path / "run")
    assert metrics["method"] == "two_heads" and metrics["num_members"] == 2
    rows = cost_table(2, (1, 8, 8), 2, TinyConvNetFactory())
    assert rows[-1]["method"] == "two_heads" and display_name("two_heads") == "Two heads"


def test_a_method_registry_entry_must_be_a_method():
    with pytest.raises(TypeError, match=r"must be a subclass of mimmo.methods.Method"):
        register_method(nn.Linear)
    with pytest.raises(ValueError, match=r"Unnamed.name must be the method's config name"):
        register_method(type("Unnamed", (TwoHeads,), {"name": ""}))


def test_an_added_method_joins_the_report_tables_and_figures_by_its_class_attributes(registered, tmp_path,
                                                                                      monkeypatch):
    root = tmp_path / "runs"
    for method, members in (("base", 1), ("mimo", 2), ("mimo", 4), ("two_heads", 3)):
        write_run(root / f"{method}{members}", method, members, 0, results(0.5, 1.0, 0.1, 0.01), 0.4, 10**8, 10**6)
    groups = group_runs(load_runs([root]))
    tables = build_tables(groups)
    # M = 3 is not an ensemble size of two_heads: no table of its own, a row (by its display name) in each M's table
    assert [table.num_members for table in tables] == [2, 4]
    for table in tables:
        assert [row_label(g, table) for g in table.groups] == ["Base", "MIMO", "Two heads"]
    drawn = []
    monkeypatch.setattr(Axes, "errorbar", lambda self, *a, **k: drawn.append((k["marker"], k["color"])))
    figures.cost_figure(groups, tmp_path / "cost.png")
    assert (">", "teal") in drawn and ("P", "tab:blue") in drawn


def test_the_readme_and_docs_link_only_into_the_repository():
    import re
    from pathlib import Path

    repo = Path(__file__).parents[1]
    for document in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        text = document.read_text(encoding="utf-8")
        assert "../shared" not in text and "SPEC.md" not in text and "DESIGN.md" not in text, document
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if target.startswith(("http://", "https://")):
                continue
            path = (document.parent / target).resolve()
            assert path.is_relative_to(repo.resolve()) and path.exists(), f"{document.name}: {target}"

