"""Download CIFAR-10/100 (the python version) into a data root: official archive, MD5 checked, unpacked
atomically.

The archive is fetched into a temporary folder under the root and checked against its published MD5; it is
unpacked there and the dataset folder (``cifar-10-batches-py`` or ``cifar-100-python``) is moved into place
with one rename, so a cut-off download never leaves a half-written dataset. A root that already holds the
folder is left alone (a second run does not download).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class Archive:
    """Where a dataset's archive is published, its MD5 and the folder it unpacks to."""

    url: str
    md5: str
    folder: str


# The official archives (https://www.cs.toronto.edu/~kriz/cifar.html). Tests point these at a local server.
CIFAR_ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}
CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, destination: Path, out: TextIO) -> None:
    """Stream ``url`` into ``destination`` with a progress line on ``out``; ConnectionError when offline."""
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (an https URL from the table above)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(
            f"could not download {url} ({reason}); is this machine offline? Download the archive on a machine "
            f"that is online and unpack it under the data root (data.root=DIR or MIMMO_DATA), or pass "
            "data.download=false and point data.root at a folder that holds it") from error
    total = int(response.headers.get("Content-Length") or 0)
    done = 0
    name = url.rsplit("/", 1)[-1]
    with response, open(destination, "wb") as f:
        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
            f.write(chunk)
            done += len(chunk)
            share = f"{100 * done / total:5.1f}% of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            out.write(f"\r[mimmo] downloading {name}: {share}")
            out.flush()
    out.write("\n")
    if total and done != total:
        raise ConnectionError(f"the download of {url} stopped after {done} of {total} bytes; run it again")


def download_cifar(name: str, root: str | Path, out: TextIO | None = None) -> Path:
    """Make sure ``root`` holds dataset ``name``'s folder, downloading the archive if it does not; return it."""
    if name not in CIFAR_ARCHIVES:
        raise ValueError(f"no download for dataset {name!r}; downloadable: {sorted(CIFAR_ARCHIVES)}")
    archive = CIFAR_ARCHIVES[name]
    root = Path(root).expanduser()
    target = root / archive.folder
    if target.is_dir():
        return target
    out = sys.stderr if out is None else out
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{archive.folder}-", dir=root) as temporary:
        work = Path(temporary)
        path = work / "archive.tar.gz"
        _fetch(archive.url, path, out)
        md5 = file_md5(path)
        if md5 != archive.md5:
            raise ValueError(f"the archive downloaded from {archive.url} has MD5 {md5}, expected {archive.md5}: "
                             "it is corrupt or not the official file; nothing was unpacked")
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(work / "unpacked", filter="data")
        unpacked = work / "unpacked" / archive.folder
        if not unpacked.is_dir():
            raise ValueError(f"the archive from {archive.url} holds no folder {archive.folder}/")
        if not target.is_dir():  # another process may have finished first
            unpacked.rename(target)
        else:
            shutil.rmtree(unpacked)
    out.write(f"[mimmo] {name} is in {target}\n")
    return target
