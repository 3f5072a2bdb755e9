"""The config directory and config composition, without torch (``cli``, ``grid``, ``demo`` and tests share it).

``compose(overrides)`` gives the resolved config that ``mimmo train <overrides>`` would run, through Hydra's
compose API (no run directory, nothing written). ``check_known_keys(cfg)`` refuses a setting that no config
file declares (``+train.weight_decay2=0.5`` would otherwise be written into the run's config and folder name and
read by nothing).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).parent / "configs")


# Settings that change where or how fast a run goes, not what it computes: left out of run folder names (Hydra's
# hydra.job.config.override_dirname.exclude_keys reads this list through the ``mimmo_non_semantic_keys``
# resolver), ignored when a run is resumed and when a report groups seeds. (The memory layout and torch.compile
# keep the math; floating-point sums may round differently in the last digits.)
NON_SEMANTIC_KEYS = ("output_dir", "data.root", "data.download", "train.progress_bar", "train.log_every_n_steps",
                     "train.accelerator", "train.devices", "train.num_nodes", "train.strategy", "train.threads",
                     "train.channels_last", "train.compile", "train.cuda_graphs", "train.loggers")

# Run folder names: the overrides (Hydra's override_dirname) while they fit in this many bytes; a longer one
# keeps its first bytes and ends in a hash of the whole name (file names may not exceed 255 bytes).
MAX_NAME_BYTES = 120
HASH_CHARS = 16


# A boolean override value, in any case (Hydra reads true/True/TRUE alike, and its sweeper passes True/False).
BOOLEAN_ITEM = re.compile(r"(?:^|(?<=,))([^,=]+=)(true|false)(?=,|$)", re.IGNORECASE)


def canonical_overrides(override_dirname: str) -> str:
    """``override_dirname`` with booleans spelt ``true``/``false``: ``evaluation.shifted=false`` on the command line
    and ``False`` from a sweep name one run, so they name one folder."""
    return BOOLEAN_ITEM.sub(lambda match: match.group(1) + match.group(2).lower(), override_dirname)


def run_name(override_dirname: str, output_dir: str | None = None) -> str:
    """The run folder name for Hydra's ``override_dirname`` (sorted ``key=value`` overrides joined by ``,``),
    booleans in one spelling (:func:`canonical_overrides`).

    A folder that an earlier version named with the booleans as given, and that exists under ``output_dir``
    while the canonical one does not, keeps being used (see :func:`_name`)."""
    name = _name(canonical_overrides(override_dirname), output_dir)
    if output_dir is not None and not (Path(output_dir) / name).is_dir():
        given = _name(override_dirname, output_dir)
        if given != name and (Path(output_dir) / given).is_dir():
            return given
    return name


def _name(override_dirname: str, output_dir: str | None = None) -> str:
    """Up to :data:`MAX_NAME_BYTES` bytes the name is the overrides themselves ('default' for none). A longer name
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
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("mimmo_non_semantic_keys"):
        OmegaConf.register_new_resolver("mimmo_non_semantic_keys", lambda: list(NON_SEMANTIC_KEYS))


register_resolvers()  # run folder names and the non-semantic settings


def compose(overrides: list[str]) -> DictConfig:
    """The config for ``overrides`` without running anything (no Hydra run directory); also from inside a running
    Hydra application (a job of a ``--multirun`` sweep), whose global Hydra state is set aside meanwhile."""
    running = GlobalHydra.instance()  # a running application's global state, or an empty one (public API only)
    application = running.hydra
    running.clear()  # hydra.initialize_config_dir refuses to start while it is initialised
    try:
        with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return hydra.compose(config_name="config", overrides=list(overrides))
    finally:
        running.clear()  # initialize_config_dir initialised it meanwhile, then put back a copy of it cleared
        GlobalHydra.set_instance(running)
        if application is not None:
            running.initialize(application)


def check_overrides_parse(overrides: list[str]) -> None:
    """Refuse an override that Hydra's override grammar cannot read (``output_dir=/runs/a=b``, a non-ASCII
    character outside quotes), naming it and how to quote its value; flags (``--multirun``) are skipped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        if override.startswith("-"):
            continue
        try:
            parser.parse_overrides([override])
        except OverrideParseException as error:
            key, _, value = override.partition("=")
            raise ValueError(f"the override {override!r} cannot be read ({' '.join(error.message.split())}); quote a "
                             f"value that holds '=', spaces, brackets or non-ASCII characters: {key}='{value}' (in "
                             f"a shell: \"{key}='{value}'\")") from error


# The config groups whose section names its option (``method=mimo`` gives ``method.name: mimo``).
NAMED_GROUPS = ("method", "model", "data")


@lru_cache(maxsize=64)
def _declared(choices: tuple[str, ...]) -> dict[str, Any]:
    declared = OmegaConf.to_container(compose(list(choices)), resolve=False)
    assert isinstance(declared, dict)
    return declared


def declared_config(cfg: DictConfig) -> dict[str, Any]:
    """What the config files declare for the options ``cfg`` chose: the config of those group options alone (no
    values set). A section whose option has no file (a method, backbone or dataset registered from Python) is
    None: its registry checks its options."""
    choices, unfiled = [], []
    for group in NAMED_GROUPS:
        name = OmegaConf.select(cfg, f"{group}.name")
        if isinstance(name, str) and (Path(CONFIG_DIR) / group / f"{name}.yaml").is_file():
            choices.append(f"{group}={name}")
        else:
            unfiled.append(group)
    return {**_declared(tuple(choices)), **dict.fromkeys(unfiled)}


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse any key of ``cfg`` that the config files do not declare for its options (nothing would read it):
    ValueError naming the key and the keys allowed there. Hydra's own section is not checked."""

    def check(node: Any, declared: Any, path: str) -> None:
        if not isinstance(node, dict) or not isinstance(declared, dict):
            return  # a value (a list, a number, null), or a section without a config file
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if where == "hydra":
                continue
            if key not in declared:
                section = f"the {path} settings" if path else "the top-level settings"
                raise ValueError(f"unknown setting {where} (nothing reads it); {section} are "
                                 f"{', '.join(sorted(map(str, declared)))}")
            check(value, declared[key], where)

    check(OmegaConf.to_container(cfg, resolve=False), declared_config(cfg), "")
