"""The dataset registry: a folder of images, CIFAR download (against a local server), data checked up front."""

from __future__ import annotations

import functools
import gzip
import http.server
import importlib.resources
import io
import json
import pickle
import shutil
import struct
import tarfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tiny_runs import assert_refused_before_training, tiny

from mimmo import training
from mimmo.cli import grid as grids
from mimmo.cli import main
from mimmo.cli.grid import run_grid
from mimmo.config import compose
from mimmo.data import DATASETS, check_data, dataset_shape, load_data, load_folder
from mimmo.data import download as download_module
from mimmo.data.datasets import ImageSet, load_embedded, split_train
from mimmo.data.download import Archive, file_md5
from mimmo.data.folder import read_images
from mimmo.data.safe_pickle import safe_load
from mimmo.report import report
from mimmo.training import load_run, train

DATA_CONFIGS = Path(__file__).parents[1] / "src" / "mimmo" / "configs" / "data"
CLASSES = ("cat", "dog", "fox")


def make_image_folder(root: Path, per_class: dict[str, int], size: tuple[int, int] = (12, 10),
                      mode: str = "RGB") -> Path:
    """root/<split>/<class>/<i>.png with a class-dependent colour, so that the labels can be checked."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 30, size=(size[1], size[0], 3), dtype=np.uint8) + 100 * label
                suffix = ".jpg" if i == 0 and split == "train" else ".png"
                Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(folder / f"{i}{suffix}")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("folder"), {"train": 10, "test": 3})


def test_every_dataset_has_a_config_and_every_config_a_dataset():
    assert {path.stem for path in DATA_CONFIGS.glob("*.yaml")} == set(DATASETS)
    assert set(DATASETS) >= {"embedded", "cifar10", "cifar100", "folder"}


def test_unknown_dataset_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; choose one of \['cifar10', 'cifar100', "
                                         r"'embedded', 'folder'\]"):
        dataset_shape({"name": "mnist"})


def test_a_folder_is_read_into_uint8_tensors_resized_with_its_class_names(image_folder):
    splits = load_folder(image_folder, seed=0, size=8, channels=3, validation_fraction=0.1)
    assert splits.class_names == CLASSES and splits.num_classes == 3 and splits.input_shape == (3, 8, 8)
    assert splits.train.images.dtype == torch.uint8
    assert len(splits.train) + len(splits.validation) == 30 and len(splits.validation) == 3
    assert sorted(splits.test.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Each class was drawn in its own intensity band: the label is the image's brightness band.
    for part in (splits.train, splits.validation, splits.test):
        bands = (part.images.float().mean(dim=(1, 2, 3)) // 100).long()
        assert torch.equal(bands, part.labels)


def test_a_folder_in_grey_with_rectangular_size(image_folder):
    splits = load_folder(image_folder, seed=0, size=[6, 9], channels=1)
    assert splits.input_shape == (1, 6, 9)


def test_a_val_folder_is_the_validation_split(tmp_path):
    root = make_image_folder(tmp_path, {"train": 4, "val": 2, "test": 1})
    splits = load_folder(root, seed=0, size=8)
    assert len(splits.train) == 12 and len(splits.validation) == 6 and len(splits.test) == 3


def test_folder_shape_is_known_from_the_config(image_folder):
    cfg = compose(["data=folder", f"data.root={image_folder}", "data.size=8", "data.channels=1"])
    assert dataset_shape(cfg.data) == ((1, 8, 8), 3)


@pytest.mark.parametrize(("layout", "match"), [
    ("none", r"data=folder needs data.root=DIR"),
    ("empty", r"expected .*/train, which does not exist"),
    ("no_test", r"expected .*/test, which does not exist"),
    ("extra_class", r"has class folders \['wolf'\] that train/ does not have"),
    ("bad_image", r"is not a readable image"),
    ("empty_class", r"the class folder\(s\) \['.*/train/wolf'\] hold no .png/.jpg/.jpeg image"),
])
def test_a_bad_folder_is_refused_naming_the_path(tmp_path, layout, match):
    root = tmp_path / "data"
    if layout != "empty" and layout != "none":
        make_image_folder(root, {"train": 2, "test": 1})
    if layout == "no_test":
        for path in sorted((root / "test").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (root / "test").rmdir()
    if layout == "extra_class":
        (root / "test" / "wolf").mkdir()
    if layout == "bad_image":
        (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    if layout == "empty_class":
        (root / "train" / "wolf").mkdir()
        (root / "train" / "wolf" / "notes.txt").write_text("not an image")
    root.mkdir(exist_ok=True)
    data = {"name": "folder", "root": None if layout == "none" else str(root), "size": 8, "channels": 3,
            "validation_fraction": 0.5}
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        load_data(data, seed=0)


def test_an_empty_class_folder_is_refused_by_the_check_and_the_shape(tmp_path):
    """An empty train/<class>/ would be a class without images: a silent extra output (4 classes, not 3)."""
    root = make_image_folder(tmp_path, {"train": 1, "test": 1})
    (root / "train" / "empty_class").mkdir()
    data = {"name": "folder", "root": str(root), "size": 8, "channels": 3}
    for action in (check_data, dataset_shape):
        with pytest.raises(FileNotFoundError, match=r"\['.*/train/empty_class'\] hold no"):
            action(data)


def write_png_16bit_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow writes 16-bit grey, not 16-bit RGB): (H, W, 3) uint16."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits per channel, colour type 2: RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def read_one(tmp_path: Path, save, channels: int) -> np.ndarray:
    """The single image that ``save(path)`` writes, read as data=folder reads it: (H, W, C) uint8."""
    folder = tmp_path / "split"
    (folder / "a").mkdir(parents=True, exist_ok=True)
    path = folder / "a" / "image.png"
    save(path)
    return read_images(folder, ("a",), (4, 5), channels).images[0].permute(1, 2, 0).numpy()


def test_16_bit_grey_and_rgb_keep_their_high_byte(tmp_path):
    """16-bit values v become v >> 8 (65535 -> 255, 0x1234 -> 0x12), grey and RGB alike; no saturation."""
    grey = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000 + 300)
    read = read_one(tmp_path, lambda path: Image.fromarray(grey).save(path), channels=1)
    assert np.array_equal(read[..., 0], grey >> 8) and (read < 255).mean() > 0.9
    assert np.array_equal(read_one(tmp_path, lambda path: Image.fromarray(grey).save(path), channels=3),
                          np.repeat((grey >> 8)[..., None], 3, axis=2).astype(np.uint8))
    rgb = np.stack([grey, 65535 - grey, np.full_like(grey, 0x1234)], axis=-1)
    read = read_one(tmp_path, lambda path: write_png_16bit_rgb(path, rgb), channels=3)
    assert np.array_equal(read, (rgb >> 8).astype(np.uint8))
    assert read[0, 0].tolist() == [1, 254, 0x12]


def test_palette_images_are_looked_up_and_transparency_composited_onto_black(tmp_path):
    palette = [10, 20, 30, 200, 100, 50, 255, 255, 255]
    indices = np.array([[0, 1, 2, 1, 0]] * 4, dtype=np.uint8)

    def save_palette(path: Path, transparent: int | None = None) -> None:
        image = Image.fromarray(indices, "P")
        image.putpalette(palette)
        image.save(path, **({} if transparent is None else {"transparency": transparent}))

    colours = np.array(palette, dtype=np.uint8).reshape(3, 3)
    assert np.array_equal(read_one(tmp_path, save_palette, channels=3), colours[indices])
    with_transparent = read_one(tmp_path, lambda path: save_palette(path, transparent=2), channels=3)
    assert np.array_equal(with_transparent, np.where((indices == 2)[..., None], 0, colours[indices]))
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = [[255, 128, 0, 51, 255]] * 4
    read = read_one(tmp_path, lambda path: Image.fromarray(rgba, "RGBA").save(path), channels=3)
    # colour x alpha / 255, rounded: alpha 128 -> (100, 50, 25); alpha 51 (0.2) -> (40, 20, 10); alpha 0 -> black
    assert read[0].tolist() == [[200, 100, 50], [100, 50, 25], [0, 0, 0], [40, 20, 10], [200, 100, 50]]
    grey_alpha = np.stack([np.full((4, 5), 200, np.uint8), rgba[..., 3]], axis=-1)
    read = read_one(tmp_path, lambda path: Image.fromarray(grey_alpha, "LA").save(path), channels=1)
    assert read[0, :, 0].tolist() == [200, 100, 0, 40, 200]


def test_an_image_mode_without_a_clear_8_bit_reading_is_refused_naming_the_file(tmp_path):
    floats = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    with pytest.raises(ValueError, match=r"image\.png has the image mode 'F', which data=folder does not read"):
        read_one(tmp_path, lambda path: Image.fromarray(floats).save(path, format="TIFF"), channels=3)


def test_a_train_size_below_one_image_per_class_is_refused_naming_the_classes(image_folder):
    data = {"name": "folder", "root": str(image_folder), "size": 8, "train_size": 2}
    with pytest.raises(ValueError, match=r"folder: data.train_size=2, fewer than the 3 classes, leaves the class\(es\) "
                                         r"\['fox'\] without a training image; raise it to at least 3"):
        load_data(data, seed=0)
    assert len(load_data({**data, "train_size": 3}, seed=0).train.labels.unique()) == 3


def test_a_validation_split_that_takes_a_class_whole_is_refused_naming_it():
    images = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
    train = ImageSet(images, torch.tensor([0, 0, 0, 0, 1]))
    test = ImageSet(images[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"toy: data.validation_fraction=0.75 \(held out per class, rounded\) leaves "
                                         r"the class\(es\) \['b'\] without a training image"):
        split_train("toy", train, test, 2, 0.75, seed=0, class_names=("a", "b"))
    assert split_train("toy", train, test, 2, 0.25, seed=0).train.labels.tolist().count(1) == 1


@pytest.mark.parametrize(("option", "match"), [("size=0", r"data.size must be a positive integer"),
                                               ("channels=2", r"data.channels must be 1 \(grey\) or 3 \(RGB\)")])
def test_bad_folder_options_are_refused(image_folder, option, match):
    key, value = option.split("=")
    with pytest.raises(ValueError, match=match):
        load_data({"name": "folder", "root": str(image_folder), key: int(value)}, seed=0)


def test_mimmo_trains_a_wrn_from_a_folder_of_pngs_and_reports_it(image_folder, tmp_path):
    """The issue's done-when: `mimmo train model=wrn model.depth=16 model.widen=2 method=mimmo data=folder
    data.root=DIR ...` trains from the folder; the 25 shifted sets and the report work on it."""
    main(["train", "model=wrn", "model.depth=16", "model.widen=2", "method=mimmo", "data=folder",
          f"data.root={image_folder}", "data.size=8", "train.epochs=1", "train.warm_start_epochs=0",
          "train.batch_size=8", "train.eval_batch_size=64", "train.progress_bar=false", f"output_dir={tmp_path}"])
    [metrics_path] = tmp_path.glob("*/metrics.json")
    run_dir = metrics_path.parent
    method, normalizer, cfg = load_run(run_dir)
    assert method.num_exits == 3 and method.num_members == 2 and cfg.model.name == "wrn"
    metrics = json.loads(metrics_path.read_text())
    assert metrics["class_names"] == list(CLASSES) and metrics["data_shape"] == [3, 8, 8]
    assert len(metrics["shifted"]["sets"]) == 25
    summary = report([run_dir], tmp_path / "report", figures=False)  # (figures: tests/test_report.py)
    assert "folder" in summary


def test_an_mlp_run_flattens_images_and_loads_back(image_folder, tmp_path):
    overrides = ["model=mlp", "model.hidden=[8,8]", "model.stem_features=8", "method=mimo", "data=folder",
                 f"data.root={image_folder}", "data.size=8", "train.epochs=1", "train.batch_size=8",
                 "train.progress_bar=false", "evaluation.shifted=false", f"output_dir={tmp_path}"]
    main(["train", *overrides])
    [run_dir] = [p.parent for p in tmp_path.glob("*/metrics.json")]
    method, normalizer, _ = load_run(run_dir)
    assert normalizer.flatten
    images = load_folder(image_folder, 0, size=8).test.images
    probs = method(normalizer(images)).probs()
    assert probs.shape == (9, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(9))


def test_another_folder_in_the_same_output_dir_is_refused_saying_what_differs(tmp_path, capsys):
    """data.root is not part of the run folder's name: the dataset's identity recorded in config.yaml keeps a second
    dataset from being skipped as finished (or resumed) in the first one's folder."""
    first = make_image_folder(tmp_path / "a", {"train": 4, "test": 1})
    second = make_image_folder(tmp_path / "b", {"train": 5, "test": 1})
    runs = tmp_path / "runs"
    overrides = ["model=mlp", "model.hidden=[8]", "model.stem_features=8", "method=base", "data=folder", "data.size=8",
                 "data.validation_fraction=0.5",
                 "train.epochs=1", "train.batch_size=4", "train.progress_bar=false", "evaluation.shifted=false",
                 "evaluation.calibrate=false", f"output_dir={runs}"]
    main(["train", *overrides, f"data.root={first}"])
    [run_dir] = [p.parent for p in runs.glob("*/metrics.json")]
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["dataset_identity"]
    assert recorded["classes"] == list(CLASSES) and recorded["images"]["train"] == dict.fromkeys(CLASSES, 4)
    capsys.readouterr()

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
        assert exited.value.code == 2
        return capsys.readouterr().err.strip()

    line = refused("train", *overrides, f"data.root={second}")
    assert line.startswith(f"mimmo train: {run_dir} was trained on other data than data.root={second} holds now "
                           "(images/train/cat: 4 then, 5 now; images/train/dog: 4 then, 5 now;")
    shutil.copytree(first, tmp_path / "c")
    (tmp_path / "c" / "test" / "fox" / "0.png").write_bytes(b"\x00" * 10 + (first / "test/fox/0.png").read_bytes())
    config = (run_dir / "config.yaml").read_text().replace(str(first), str(tmp_path / "c"))
    (run_dir / "config.yaml").write_text(config)
    line = refused("evaluate", str(run_dir), "--device", "cpu")
    assert "(the same classes and image counts, but other file names or sizes)" in line
    # A run folder saved before the identity was recorded still counts as finished.
    (run_dir / "config.yaml").write_text(config.split("dataset_identity:")[0])
    main(["train", *overrides, f"data.root={tmp_path / 'c'}"])
    assert "already finished; skipping" in capsys.readouterr().out


def test_a_grid_refuses_to_skip_a_finished_run_whose_folder_dataset_changed(tmp_path):
    root = make_image_folder(tmp_path / "data", {"train": 2, "test": 1})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"sweeps": [["method=base", "data=folder", f"data.root={root}",
                                                f"output_dir={tmp_path / 'runs'}"]]}))
    [[run]] = grids.plan(grids.load_grid(str(path)))
    run.folder.mkdir(parents=True)
    (run.folder / "metrics.json").write_text("{}")
    identity = {"classes": ["cat", "dog"], "images": {"train": {"cat": 2, "dog": 2}}, "files_sha256": "0"}
    (run.folder / "config.yaml").write_text(yaml.safe_dump({"dataset_identity": identity}))
    message = (r"was trained on other data than data.root=.* holds now \(classes: \['cat', 'dog'\] then, \['cat', "
               r"'dog', 'fox'\] now; images/test/cat: None then, 1 now; .*and 1 more\)")
    with pytest.raises(ValueError, match=message):
        grids.run_grid(str(path), dry_run=True, out=lambda line: None)


# ------------------------------------------------------------------------------------------ CIFAR download


def cifar10_archive(path: Path, per_batch: int = 20) -> Path:
    """A small archive in the official layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    rng = np.random.default_rng(0)

    def batch(count: int) -> bytes:
        return pickle.dumps({b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                             b"labels": [i % 10 for i in range(count)]})

    files = {f"data_batch_{i}": batch(per_batch) for i in range(1, 6)}
    files["test_batch"] = batch(per_batch)
    files["batches.meta"] = pickle.dumps({b"label_names": [f"class{i}".encode() for i in range(10)]})
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        CountingHandler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www, in a thread; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    CountingHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


def point_cifar10_at(monkeypatch, url: str, md5: str) -> None:
    monkeypatch.setitem(download_module.CIFAR_ARCHIVES, "cifar10", Archive(url, md5, "cifar-10-batches-py"))


def test_download_fetches_checks_and_unpacks_then_finds_it_the_second_time(server, tmp_path, monkeypatch, capsys):
    base, www = server
    archive = cifar10_archive(www / "cifar-10-python.tar.gz")
    point_cifar10_at(monkeypatch, f"{base}/cifar-10-python.tar.gz", file_md5(archive))
    root = tmp_path / "root"
    data = {"name": "cifar10", "root": str(root), "download": True, "validation_fraction": 0.1}
    check_data(data)  # nothing there yet, but it will be downloaded
    splits = load_data(data, seed=0)
    assert len(splits.train) + len(splits.validation) == 100 and len(splits.test) == 20
    assert splits.class_names == tuple(f"class{i}" for i in range(10))
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no temporary left behind
    assert "100.0%" in capsys.readouterr().err
    assert CountingHandler.requests == ["/cifar-10-python.tar.gz"]
    again = load_data(data, seed=0)
    assert CountingHandler.requests == ["/cifar-10-python.tar.gz"]  # found, not downloaded again
    assert torch.equal(again.train.images, splits.train.images)


def test_a_download_with_the_wrong_md5_is_refused_and_leaves_nothing(server, tmp_path, monkeypatch):
    base, www = server
    cifar10_archive(www / "cifar-10-python.tar.gz")
    point_cifar10_at(monkeypatch, f"{base}/cifar-10-python.tar.gz", "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(ValueError, match=r"has MD5 [0-9a-f]{32}, expected 0{32}"):
        load_data({"name": "cifar10", "root": str(root), "download": True}, seed=0)
    assert list(root.iterdir()) == []


def test_offline_download_says_so(tmp_path, monkeypatch):
    point_cifar10_at(monkeypatch, "http://127.0.0.1:9/cifar-10-python.tar.gz", "0" * 32)  # discard port: refused
    with pytest.raises(ConnectionError, match=r"could not download http://127.0.0.1:9/.*offline"):
        load_data({"name": "cifar10", "root": str(tmp_path), "download": True}, seed=0)


# ------------------------------------------------------------------------------------ data checked up front


def test_train_refuses_missing_cifar_before_any_folder_is_made(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "data=cifar100", "data.root=/nonexistent", f"output_dir={tmp_path / 'runs'}"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("mimmo train: dataset cifar100: expected the folder "
                                              "/nonexistent/cifar-100-python, which does not exist")
    assert not (tmp_path / "runs").exists()


def test_a_multirun_checks_every_dataset_before_any_folder_is_made(tmp_path, image_folder, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--multirun", "data=embedded,cifar10", "data.root=/nonexistent",
              f"output_dir={tmp_path / 'runs'}"])
    assert exited.value.code == 2
    assert "dataset cifar10: expected the folder /nonexistent/cifar-10-batches-py" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_data_with_download_on_passes_the_check(tmp_path):
    cfg = compose(["data=cifar10", f"data.root={tmp_path}", "data.download=true"])
    check_data(cfg.data)
    cfg = compose(["data=cifar10", f"data.root={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"data.download=true"):
        check_data(cfg.data)


def test_a_grid_dry_run_refuses_missing_data(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text('description: t\nsweeps:\n  - [method=base, data=cifar100, "seed=0,1"]\n')
    with pytest.raises(FileNotFoundError, match=r"run 'method=base data=cifar100 seed=0 .*' \(sweep 1\): dataset "
                                                r"cifar100: expected the folder /nonexistent/cifar-100-python"):
        run_grid(str(grid), ["data.root=/nonexistent", f"output_dir={tmp_path / 'runs'}"], dry_run=True)
    with pytest.raises(SystemExit):
        main(["grid", str(grid), "--dry-run", "data.root=/nonexistent"])
    assert "cifar-100-python" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("channels", [1, 3])
def test_the_25_shifts_apply_to_grey_and_rgb_images_of_any_size(channels):
    from mimmo.data.shifts import apply_shift, shifted_sets

    images = torch.rand(4, channels, 6, 9)
    for kind, level in shifted_sets():
        shifted = apply_shift(images, kind, level, torch.arange(4), seed=0)
        assert shifted.shape == images.shape and torch.isfinite(shifted).all(), (kind, level)


def test_missing_cifar_names_the_expected_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/cifar-100-python"):
        train(tiny("data=cifar100", "data.root=/nonexistent"), tmp_path / "run")
    assert_refused_before_training(tmp_path / "run")


GARBAGE = {
    "text": b"this is not a CIFAR batch, just garbage bytes\n" * 20,
    "zeros": bytes(4096),
    "truncated": pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]})[:100],
    "not_a_dict": pickle.dumps([1, 2, 3]),
    "wrong_key": pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3]}),
    "wrong_size": pickle.dumps({b"data": np.zeros((4, 1000), np.uint8), b"labels": [0, 1, 2, 3]}),
    "label_count": pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}),
    # Opcode BINBYTES8 announcing 2**63 - 1 bytes: pickle raises OverflowError before reading anything.
    "huge_length": b"\x8e" + b"\xff" * 7 + b"\x7f" + bytes(64),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_corrupt_cifar_is_refused_with_a_value_error(tmp_path, kind):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(GARBAGE[kind])
    with pytest.raises(ValueError, match=r"data_batch_1"):
        train(tiny("data=cifar10", f"data.root={tmp_path / 'data'}"), tmp_path / "run")
    assert_refused_before_training(tmp_path / "run")


@pytest.fixture(scope="module")
def embedded():
    return {"first": load_embedded(0), "again": load_embedded(0), "other": load_embedded(1)}


def raw_embedded() -> tuple[np.ndarray, np.ndarray]:
    folder = importlib.resources.files("animal_shape_mnist") / "data" / "Animal Shape"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    return images, labels


def test_embedded_splits_are_disjoint_and_deduplicated(embedded):
    splits = embedded["first"]
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.train.images.dtype == torch.uint8
    images = all_images(splits)
    assert len(torch.unique(images, dim=0)) == len(images)  # no image twice, within or across splits
    raw_images, _ = raw_embedded()
    assert len(raw_images) == 10_000
    # every distinct image is used: only exact duplicates were dropped
    assert len(images) == len(np.unique(raw_images.reshape(len(raw_images), -1), axis=0))


def test_embedded_splits_are_stratified(embedded):
    splits = embedded["first"]
    labels = torch.cat([splits.train.labels, splits.validation.labels, splits.test.labels])
    per_class = torch.bincount(labels, minlength=10)
    test = torch.bincount(splits.test.labels, minlength=10)
    validation = torch.bincount(splits.validation.labels, minlength=10)
    assert bool(((test - 0.2 * per_class).abs() <= 1).all())
    assert bool(((validation - 0.1 * (per_class - test)).abs() <= 1).all())
    assert not bool((splits.train.labels[1:] >= splits.train.labels[:-1]).all())  # shuffled, not sorted


def test_embedded_splits_are_deterministic_per_seed(embedded):
    first, again, other = embedded["first"], embedded["again"], embedded["other"]
    for name in ("train", "validation", "test"):
        assert torch.equal(getattr(first, name).images, getattr(again, name).images)
        assert torch.equal(getattr(first, name).labels, getattr(again, name).labels)
    assert not torch.equal(first.test.images, other.test.images)
    assert len(torch.unique(all_images(other), dim=0)) == len(all_images(first))


def test_train_size_keeps_a_stratified_subset_and_the_same_held_out_sets(embedded):
    full = embedded["first"]
    small = load_embedded(0, train_size=200)
    assert len(small.train) == 200
    share = torch.bincount(full.train.labels, minlength=10) / len(full.train)
    assert bool(((torch.bincount(small.train.labels, minlength=10) - 200 * share).abs() <= 1).all())
    full_rows = {bytes(row.numpy()) for row in full.train.images.flatten(1)}
    assert all(bytes(row.numpy()) in full_rows for row in small.train.images.flatten(1))
    assert torch.equal(small.validation.images, full.validation.images)
    assert torch.equal(small.test.images, full.test.images)
    with pytest.raises(ValueError, match="train_size"):
        load_embedded(0, train_size=10**6)
    with pytest.raises(ValueError, match=r"validation_fraction must lie in \(0, 1\), got 1\.5"):
        load_embedded(0, validation_fraction=1.5)


class Payload:
    """Unpickling this calls ``pathlib.Path.touch`` on a file: proof that the file ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_crafted_cifar_batch_does_not_run_its_payload(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}))
    pickle.loads(pickle.dumps(Payload(tmp_path / "check")))  # plain pickle runs the payload
    assert (tmp_path / "check").exists()
    with pytest.raises(ValueError, match=r"data_batch_1.*global 'pathlib.*' is not allowed"):
        training.prepare_run(tiny("data=cifar10", f"data.root={tmp_path / 'data'}"))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["garbage", "payload", "truncated", "not_a_dict"])
def test_a_damaged_or_crafted_cifar_meta_file_is_refused_in_one_line(tmp_path, kind):
    marker = tmp_path / "pwned"
    write_cifar(tmp_path / "data", [0, 1] * 20)
    meta = {"garbage": b"this is not a pickle\n" * 10,
            "payload": pickle.dumps({b"label_names": Payload(marker)}),
            "truncated": pickle.dumps({b"label_names": [b"airplane"] * 10})[:30],
            "not_a_dict": pickle.dumps([b"airplane"] * 10)}[kind]
    (tmp_path / "data" / "cifar-10-batches-py" / "batches.meta").write_bytes(meta)
    match = r"batches.meta (is not a valid CIFAR meta file|does not list 10 class names)"
    with pytest.raises(ValueError, match=match) as refused:
        training.load_splits(tiny("data=cifar10", f"data.root={tmp_path / 'data'}", "data.train_size=null"))
    assert not marker.exists()
    if kind == "payload":
        assert "global 'pathlib" in str(refused.value) and "is not allowed" in str(refused.value)


def test_the_restricted_unpickler_reads_what_cifar_holds():
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [3, 1], b"data": np.arange(6, dtype=np.uint8),
             b"filenames": [b"a.png", b"b.png"]}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        loaded = safe_load(io.BytesIO(pickle.dumps(batch, protocol=protocol)), encoding="bytes")
        assert loaded[b"labels"] == [3, 1] and loaded[b"data"].tolist() == list(range(6))


@pytest.mark.parametrize(("labels", "size", "match"), [
    ([0, 1, 2, 10] * 10, 3072, r"labels must lie in \[0, 9\] \(10 classes\), got values from 0 to 10"),
    ([0, -1] * 20, 3072, r"labels must lie in \[0, 9\].*from -1"),
    ([0, 1] * 20, 6144, r"b'data' must be an array of shape \(N, 3072\), got \(40, 6144\)"),
])
def test_cifar_is_checked_on_load(tmp_path, labels, size, match):
    write_cifar(tmp_path, labels, size)
    with pytest.raises(ValueError, match=match):
        training.load_splits(tiny("data=cifar10", f"data.root={tmp_path}", "data.train_size=null"))


def all_images(splits) -> torch.Tensor:
    return torch.cat([splits.train.images, splits.validation.images, splits.test.images]).flatten(1)


def write_cifar(root: Path, labels: list[int], size: int = 3072) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batch = {b"data": np.zeros((len(labels), size), np.uint8), b"labels": labels}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
