"""The package layout (docs/architecture.md): layers that import only downwards, nothing loose at the top of
``src/mimmo``, and every name the README and docs/ tell users to import importable from where they say."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mimmo"

# The layer of each top-level part of mimmo, lowest first (docs/architecture.md, "Layers"): a module may import
# its own layer and the ones below, never one above. data and models are peers that do not import each other.
LAYERS = {"mimmo": 0, "config": 0, "data": 1, "models": 1, "methods": 2, "evaluation": 3, "training": 4,
          "runs": 5, "report": 6, "cli": 7}
PEERS_APART = {("data", "models"), ("models", "data")}


def part_of(module: str) -> str:
    """The top-level part of a dotted ``mimmo...`` module name ('mimmo' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mimmo"


def imported_modules(path: Path, module: str) -> set[str]:
    """Every ``mimmo`` module that ``path`` imports, at the top or inside a function (relative imports resolved)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
    return {name for name in found if name == "mimmo" or name.startswith("mimmo.")}


def layer_violations(package_dir: Path) -> list[str]:
    """``importer -> imported`` for each import of a higher layer (or of a peer kept apart) under ``package_dir``."""
    violations = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir.parent).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        here = part_of(module)
        for imported in sorted(imported_modules(path, module)):
            there = part_of(imported)
            if there not in LAYERS or here not in LAYERS:
                violations.append(f"{module} -> {imported} (a part with no layer in LAYERS)")
            elif LAYERS[there] > LAYERS[here] or (here, there) in PEERS_APART:
                violations.append(f"{module} -> {imported}")
    return violations


def test_no_layer_imports_a_higher_one():
    assert layer_violations(PACKAGE) == []


def test_a_downward_import_of_a_higher_layer_is_reported(tmp_path):
    fake = tmp_path / "mimmo"
    (fake / "models").mkdir(parents=True)
    (fake / "runs").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "config.py").write_text("import os\n")
    (fake / "models" / "__init__.py").write_text("from . import net\n")
    (fake / "models" / "net.py").write_text("def f():\n    from ..runs import folder\n    from mimmo.data import x\n")
    (fake / "runs" / "folder.py").write_text("from mimmo.models.net import f\nfrom mimmo.config import y\n")
    assert layer_violations(fake) == ["mimmo.models.net -> mimmo.data", "mimmo.models.net -> mimmo.runs"]


def test_only_the_package_face_and_the_config_are_loose_at_the_top():
    loose = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "config.py"]
    assert set(LAYERS) - {"mimmo", "config"} == {path.name for path in PACKAGE.iterdir()
                                                 if (path / "__init__.py").is_file()}


def test_the_config_and_the_command_line_import_without_torch():
    """``mimmo --help`` and a grid's planning stay fast: torch is imported only by the commands that need it."""
    code = "import sys, mimmo.config, mimmo.cli.grid, mimmo.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_config_module_does_not_import_torch():
    assert not any(name == "torch" or name.startswith("torch.") for name in
                   {alias.name for node in ast.walk(ast.parse((PACKAGE / "config.py").read_text()))
                    if isinstance(node, ast.Import) for alias in node.names}
                   | {node.module or "" for node in ast.walk(ast.parse((PACKAGE / "config.py").read_text()))
                      if isinstance(node, ast.ImportFrom)})


# ------------------------------------------------------------------------------------- the documented API

IMPORT_FROM = re.compile(r"^\s*from (mimmo(?:\.\w+)*) import (?:\(([\w\s,]+)\)|([\w ,]+))", re.MULTILINE)
DOTTED = re.compile(r"(?<![\w/.-])(mimmo(?:\.[A-Za-z_]\w*)+)(?![\w/-])")


def documented_names(text: str) -> set[str]:
    """``mimmo.x.Name`` for each name a text imports (``from mimmo.x import A, B``) or names by its dotted path;
    a dotted name followed by a file suffix (``mimmo.yaml``) is a file, not a name."""
    names = {f"{module}.{name.strip()}" for module, grouped, listed in IMPORT_FROM.findall(text)
             for name in (grouped or listed).split(",") if name.strip()}
    names |= {match for match in DOTTED.findall(text) if match.rsplit(".", 1)[1] not in ("yaml", "md", "py", "json")}
    return names


def resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted`` and look the rest up as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as error:
            if error.name is None or not ".".join(parts[:cut]).startswith(error.name):
                raise
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTED = sorted({name for path in DOCUMENTS for name in documented_names(path.read_text())})


def test_documented_names_are_found_in_the_docs():
    assert "mimmo.training.load_run" in DOCUMENTED and "mimmo.evaluation.cost.count_cost" in DOCUMENTED
    text = ("```python\nfrom mimmo.methods import (MIMMO,\n    Progress)\n```\n"
            "see mimmo.data.Splits or configs/method/mimmo.yaml")
    assert documented_names(text) == {"mimmo.methods", "mimmo.methods.MIMMO", "mimmo.methods.Progress",
                                      "mimmo.data.Splits"}


@pytest.mark.parametrize("name", DOCUMENTED)
def test_every_documented_name_imports_from_where_it_is_documented(name):
    resolve(name)


def test_a_name_that_is_not_there_is_refused():
    with pytest.raises(AttributeError):
        resolve("mimmo.training.no_such_name")
    with pytest.raises(AttributeError):
        resolve("mimmo.no_such_package.name")
