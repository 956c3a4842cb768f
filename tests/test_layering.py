"""The layering rules of DESIGN.md, checked on the source: core knows no family and no command
line; no family imports another (serve, the front end over all of them, is the exception)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medtools"
SHARED = {"core", "nets", "imagecipher"}  # packages every family may import
FRONT_ENDS = {"serve"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _families() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name not in SHARED)


def test_core_names_no_family_and_no_command_line() -> None:
    bad = []
    for path in (PACKAGE / "core").rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")
            if name.startswith("typer") or name.startswith("click") or (top[0] == "medtools" and len(top) > 1 and top[1] not in ("core",)):
                bad.append(f"{path.relative_to(PACKAGE)}: {name}")
    assert not bad, bad


def test_no_family_imports_another() -> None:
    families = _families()
    bad = []
    for family in families:
        if family in FRONT_ENDS:
            continue
        for path in (PACKAGE / family).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "medtools" and len(parts) > 1 and parts[1] in families and parts[1] != family:
                    bad.append(f"{path.relative_to(PACKAGE)}: {name}")
    assert not bad, bad
