"""The run-folder contract: what a run folder holds, how it is named, written, read and locked.

Training, ``mimmo evaluate``, grids and reports all go through this module, so that the file names, the
format version and the list of settings that do not change a result exist once.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoints/last.ckpt`` (every epoch; a run started
again resumes from it), ``log/metrics.csv``, ``weights.safetensors`` (the final method and its input
normaliser) and ``metrics.json`` (written last: its presence marks a finished run). ``.lock`` exists while a
process works in the folder.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "weights.safetensors"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"
LOG_DIR = "log"
LOCK_FILE = ".lock"

# Settings that change where or how fast a run goes, not what it computes: left out of run folder names (Hydra's
# hydra.job.config.override_dirname.exclude_keys reads this list through the ``mimmo_non_semantic_keys``
# resolver), ignored when a run is resumed and when a report groups seeds. (The memory layout and torch.compile
# keep the math; floating-point sums may round differently in the last digits.)
NON_SEMANTIC_KEYS = ("output_dir", "data.root", "data.download", "train.progress_bar", "train.log_every_n_steps",
                     "train.accelerator", "train.devices", "train.num_nodes", "train.strategy", "train.threads",
                     "train.channels_last", "train.compile", "train.cuda_graphs")

# Run folder names: the overrides (Hydra's override_dirname) while they fit in this many bytes; a longer one
# keeps its first bytes and ends in a hash of the whole name (file names may not exceed 255 bytes).
MAX_NAME_BYTES = 120
HASH_CHARS = 16


# ------------------------------------------------------------------------------------------------- names


def run_name(override_dirname: str, output_dir: str | None = None) -> str:
    """The run folder name for Hydra's ``override_dirname`` (sorted ``key=value`` overrides joined by ``,``).

    Up to :data:`MAX_NAME_BYTES` bytes the name is the overrides themselves ('default' for none). A longer name
    is cut at an override boundary where one falls inside the limit and ends in ``#`` and a stable hash of the
    whole override string, so that different overrides never share a folder. A folder named after the full
    overrides that already exists under ``output_dir`` (made by an earlier version) keeps being used.
    """
    name = override_dirname.replace("/", "_") or "default"
    encoded = name.encode()
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    if output_dir is not None and len(encoded) <= 255 and (Path(output_dir) / name).is_dir():
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:HASH_CHARS]
    keep = MAX_NAME_BYTES - HASH_CHARS - 1
    head = encoded[:keep].decode(errors="ignore")
    if "," in head:
        head = head[:head.rindex(",") + 1]
    return f"{head}#{digest}"


def register_resolvers() -> None:
    """The resolvers the root config uses: ``run_name`` (folder names) and ``mimmo_non_semantic_keys``."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("mimmo_non_semantic_keys"):
        OmegaConf.register_new_resolver("mimmo_non_semantic_keys", lambda: list(NON_SEMANTIC_KEYS))


# ---------------------------------------------------------------------------------------- atomic writes


def temporary_name(path: str | Path) -> Path:
    """A temporary file beside ``path`` that no other process or thread uses (for an atomic replace)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")


class DiskFull(OSError):
    """No space left while writing a run folder's file (the temporary file is removed, the previous file kept)."""


def disk_full(path: str | Path, error: BaseException) -> DiskFull:
    """The :class:`DiskFull` for ``error`` raised while writing ``path``: one line with the path and the free space."""
    path = Path(path)
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(errno.ENOSPC, f"no space left on the device while writing {path} ({free} on {path.parent}); the "
                    "previous version of the file is kept: free some space and run the same command again")


def is_disk_full(error: BaseException) -> bool:
    """An OSError for a full disk, or torch.save's RuntimeError for a write that failed (its cause is not kept)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, RuntimeError) and "write failed" in str(error)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a per-process temporary path; once the body has written it, it replaces ``path`` in one step.
    A crash or an exception never leaves a half-written ``path`` (the temporary file is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, DiskFull):
            raise disk_full(path, error) from error
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------- reading


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """A run folder's metrics.json (None when there is none); ValueError naming the file when it is not a JSON
    object."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return None
    try:
        metrics = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it, or remove it to train the run again "
                         "(its weights and checkpoint stay)") from error
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} does not hold a JSON object; restore it, or remove it to train the run again")
    return metrics


def _interpolations(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _interpolations(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _interpolations(value, f"{prefix}{index}.")
    elif isinstance(node, str) and "${" in node:
        yield prefix.rstrip("."), node


def read_config(run_dir: str | Path) -> Any:
    """A run folder's config.yaml as an OmegaConf DictConfig, read as plain YAML (no Python objects).

    Training writes the config resolved, so an interpolation in it (``${oc.env:SECRET}``) was put there by
    someone else: it is refused, never resolved (it could copy an environment variable into metrics.json).
    """
    from omegaconf import DictConfig, OmegaConf

    path = Path(run_dir) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not a readable YAML config ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a mapping")
    for key, value in _interpolations(data):
        raise ValueError(f"{path}: {key} = {value!r} is an interpolation; a run folder's config is stored resolved, "
                         "so it is refused rather than resolved (restore the value training wrote)")
    cfg = OmegaConf.create(data)
    assert isinstance(cfg, DictConfig)
    return cfg


# -------------------------------------------------------------------------------------------------- locks


class RunFolderBusy(RuntimeError):
    """Another process works in this run folder."""


def _holder() -> str:
    return f"pid {os.getpid()} host {socket.gethostname()}"


def _parse_holder(text: str) -> tuple[int | None, str | None]:
    parts = text.split()
    try:
        return int(parts[parts.index("pid") + 1]), parts[parts.index("host") + 1]
    except (ValueError, IndexError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_file(path: Path) -> int | None:
    """Open and flock ``path``; its descriptor, or None when the file was replaced meanwhile (try again)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        holder = path.read_text(errors="replace").strip() if path.exists() else ""
        pid, host = _parse_holder(holder)
        who = f"process {pid} on host {host}" if pid is not None else "another process"
        raise RunFolderBusy(f"{path.parent} is in use by {who} (lock file {path}); wait for it to finish, or "
                            "choose another output_dir") from None
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        same = False
    if not same:  # the holder removed the file between our open and our lock: lock the new one
        os.close(fd)
        return None
    return fd


_held: dict[Path, int] = {}  # lock path -> nesting depth, in this process


@contextmanager
def lock(run_dir: str | Path, command: str = "mimmo") -> Iterator[None]:
    """Hold the run folder's exclusive lock (``.lock``, creating the folder) for the body.

    A second process refuses at once with :class:`RunFolderBusy` naming the holder's PID and host. The lock is
    an ``flock`` on the file, which the system releases when its process dies; a lock file left behind by a dead
    process is taken over (with a message on stderr). Re-entrant within one process.
    """
    path = Path(run_dir).resolve() / LOCK_FILE
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = _lock_file(path)
            if fd is not None:
                break
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise ValueError(f"run folder {path.parent} is not writable ({error.strerror}); {command} writes its files "
                         "there: make it writable, or work on a copy") from error
    previous = os.read(fd, 4096).decode(errors="replace").strip()
    if previous:
        pid, host = _parse_holder(previous)
        state = ("has ended" if host == socket.gethostname() and pid is not None and not _alive(pid)
                 else "no longer holds it")
        print(f"{command}: taking over the stale lock of {path.parent} (process {pid} on host {host} {state})",
              file=sys.stderr)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{_holder()}\n".encode())
    os.fsync(fd)
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def is_rank_zero_launcher() -> bool:
    """True in the process that starts a run; False in the other ranks a DDP launcher (Lightning's, SLURM's)
    starts for the same run folder, which must neither lock it nor refuse it as busy."""
    return all(os.environ.get(key, "0") == "0" for key in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))
