"""The package layout keeps its shape: the spine at the top, one subpackage per concern, no circles."""

from __future__ import annotations

from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[2] / "streams"
#: Modules allowed directly under ``streams/`` (besides ``__init__.py``): the spine only.
SPINE = {"assembly.py", "errors.py", "pipeline.py", "settings.py", "worker.py"}
MAX_LINES = 600


def test_only_the_spine_sits_at_the_top_of_the_package() -> None:
    """Every other module lives in a subpackage named for its concern (at most six at the top)."""
    top = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert top <= SPINE, f"modules outside a subpackage: {sorted(top - SPINE)}"
    assert len(top) <= 6


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    """Each subpackage's ``__init__.py`` has a docstring naming what it may import."""
    subpackages = [p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert {p.name for p in subpackages} >= {"contracts", "domain", "policy", "kafka", "dlq", "stack", "cli"}
    for sub in subpackages:
        text = (sub / "__init__.py").read_text(encoding="utf-8")
        assert text.startswith('"""'), f"{sub.name}/__init__.py has no docstring"
        assert "import" in text.lower(), f"{sub.name}/__init__.py does not say what it may import"


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
