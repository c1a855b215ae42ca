"""The package layout keeps its shape: the spine at the top, one subpackage per concern, no circles."""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "streams"
#: Modules allowed directly under ``streams/`` (besides ``__init__.py``): the spine only.
SPINE = {"assembly.py", "credentials.py", "errors.py", "pipeline.py", "settings.py", "worker.py"}
MAX_LINES = 600


def test_only_the_spine_sits_at_the_top_of_the_package() -> None:
    """Every other module lives in a subpackage named for its concern (at most six at the top)."""
    top = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert top <= SPINE, f"modules outside a subpackage: {sorted(top - SPINE)}"


def _subpackages() -> list[Path]:
    return sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def test_every_subpackage_says_in_one_line_what_it_owns_and_may_import() -> None:
    """Each subpackage's ``__init__.py`` is a one-line docstring ending with what it may import."""
    subpackages = _subpackages()
    assert {p.name for p in subpackages} >= {"contracts", "domain", "policy", "kafka", "dlq", "stack", "cli"}
    for sub in subpackages:
        text = (sub / "__init__.py").read_text(encoding="utf-8").strip()
        assert text.startswith('"""') and text.endswith('"""') and "\n" not in text, f"{sub.name}: not one line"
        says = "Imports:" in text or "imports anything" in text
        assert says, f"{sub.name}/__init__.py does not say what it may import"


def test_every_top_level_module_is_a_layer_of_the_import_contract() -> None:
    """A new subpackage or spine module must be placed in the layers contract (none escapes it)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [layers] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    assert layers["containers"] == ["streams"] and layers["exhaustive"] is True
    listed = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    present = {p.name for p in _subpackages()} | {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert present <= listed, f"not in the layers contract: {sorted(present - listed)}"


def test_no_module_is_longer_than_the_budget() -> None:
    """No module beyond ~600 lines: a longer one is two jobs in one file."""
    lines = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert not long, long


def test_no_import_circle_between_modules() -> None:
    """No module imports one that (directly or not) imports it back."""
    graph = grimp.build_graph("streams")
    circles = sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    )
    assert not circles, circles
