"""ARCHITECTURE.md and README's layout section name every module of the packages, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).parents[1]
PACKAGES = tuple(str(p.parent.relative_to(REPO)) for top in ("flowprep", "trainer")
                 for p in sorted((REPO / top).rglob("__init__.py")))


def _modules() -> dict[str, set[str]]:
    return {pkg: {p.stem for p in (REPO / pkg).glob("*.py") if p.stem not in ("__init__", "__main__")}
            for pkg in PACKAGES}


def test_architecture_names_every_module_and_no_other() -> None:
    text = (REPO / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`([a-z0-9_]+)\.py`", text))
    every = set().union(*_modules().values())
    assert every - named == set(), f"modules ARCHITECTURE.md does not name: {sorted(every - named)}"
    assert named - every == set(), f"ARCHITECTURE.md names modules that do not exist: {sorted(named - every)}"


def test_readme_layout_names_every_module() -> None:
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout\n"):]
    layout = layout[:layout.find("\n## ", 5)] if "\n## " in layout[5:] else layout
    words = set(re.findall(r"[a-z0-9_]+", layout))
    missing = {f"{pkg}/{m}" for pkg, mods in _modules().items() for m in mods if m not in words}
    assert not missing, f"README's layout section does not name: {sorted(missing)}"
