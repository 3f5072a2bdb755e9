"""The run-folder contract: what a run folder holds, how it is named, written, read and locked.

Training, ``mimmo evaluate``, grids and reports all go through this module, so that the file names, the
format version and the list of settings that do not change a result exist once.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoints/last.ckpt`` (every epoch; a run started
again resumes from it), ``log/metrics.csv``, ``weights.safetensors`` (the final method and its input
normaliser), ``calibration.json`` (the temperature fitted on the validation split) and ``metrics.json`` (written
last: its presence marks a finished run). ``.lock`` exists while a process works in the folder.
"""

from __future__ import annotations

import errno
import fcntl
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
from omegaconf import DictConfig, OmegaConf

# The run-folder names and the non-semantic settings are the config's (its resolvers use them); re-exported here.
from mimmo.config import HASH_CHARS, MAX_NAME_BYTES, NON_SEMANTIC_KEYS, register_resolvers, run_name  # noqa: F401

FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.json"
WEIGHTS_FILE = "weights.safetensors"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"
LOG_DIR = "log"
LOCK_FILE = ".lock"
# config.yaml's key for what identifies the run's dataset files (mimmo.data.registry.dataset_identity), beside the
# resolved config; read_config leaves it out, read_dataset_identity reads it.
DATASET_IDENTITY_KEY = "dataset_identity"




# ------------------------------------------------------------------------------------------------- names




# ---------------------------------------------------------------------------------------- atomic writes


def semantic_config(cfg: DictConfig) -> dict[str, Any]:
    """The config without keys that do not change what a run computes."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for dotted in NON_SEMANTIC_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return data



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


def write_calibration(run_dir: str | Path, section: dict[str, Any]) -> Path:
    """Save a ``calibrated`` section's temperature and its validation fit as the run folder's
    ``calibration.json`` (atomically)."""
    path = Path(run_dir) / CALIBRATION_FILE
    write_json_atomic(path, {"method": "temperature scaling", "fitted_on": "validation",
                             "temperature": section["temperature"], "validation": section["validation"]})
    return path


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


def finished_metrics_of(run_dir: str | Path) -> dict[str, Any]:
    """The metrics.json of a finished run; FileNotFoundError when the folder holds none (not finished)."""
    metrics = read_metrics(run_dir)
    if metrics is None:
        raise FileNotFoundError(f"{run_dir} is not a finished run: {METRICS_FILE} is missing")
    return metrics


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """Write a run folder's metrics.json (atomically: a reader sees the old file or the new one)."""
    write_json_atomic(Path(run_dir) / METRICS_FILE, metrics)


def update_metrics(run_dir: str | Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Set sections of a finished run's metrics.json, read again just before (the latest file keeps the rest)."""
    metrics = finished_metrics_of(run_dir)
    metrics.update(sections)
    write_metrics(run_dir, metrics)
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


def _read_config_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not a readable YAML config ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a mapping")
    return data


def read_dataset_identity(run_dir: str | Path) -> dict[str, Any] | None:
    """What identified the run's dataset files when it was trained (None for a run saved without it)."""
    identity = _read_config_yaml(Path(run_dir) / CONFIG_FILE).get(DATASET_IDENTITY_KEY)
    return identity if isinstance(identity, dict) else None


def config_text(cfg: Any, dataset_identity: dict[str, Any] | None) -> str:
    """config.yaml's text: the resolved config, and the dataset's identity where it has one."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(cfg, resolve=True)
    if dataset_identity is not None:
        text += yaml.safe_dump({DATASET_IDENTITY_KEY: dataset_identity}, sort_keys=False)
    return text


def check_same_dataset(cfg: DictConfig, run_dir: Path, current: dict[str, Any] | None = None) -> None:
    """Refuse to resume, skip or evaluate ``run_dir`` when the files of its dataset (``data.root`` of a folder
    dataset) are not those it was trained on, saying what differs. A run saved without their identity passes;
    ``current`` is the dataset's identity when the caller has it already."""
    from mimmo.data.registry import dataset_identity, identity_differences

    if not (Path(run_dir) / CONFIG_FILE).exists():
        return
    recorded = read_dataset_identity(run_dir)
    current = dataset_identity(cfg.data) if current is None else current
    if recorded is None or current is None:
        return
    differences = identity_differences(recorded, current)
    if differences:
        raise ValueError(f"{run_dir} was trained on other data than data.root={cfg.data.get('root')} holds now "
                         f"({'; '.join(differences)}); give this dataset another output_dir, or remove the folder to "
                         "train it again")


def read_config(run_dir: str | Path) -> Any:
    """A run folder's config.yaml as an OmegaConf DictConfig, read as plain YAML (no Python objects).

    Training writes the config resolved, so an interpolation in it (``${oc.env:SECRET}``) was put there by
    someone else: it is refused, never resolved (it could copy an environment variable into metrics.json).
    """
    from omegaconf import DictConfig, OmegaConf

    path = Path(run_dir) / CONFIG_FILE
    data = _read_config_yaml(path)
    data.pop(DATASET_IDENTITY_KEY, None)
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
