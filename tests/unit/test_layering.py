"""The dependency rule of DESIGN.md §2: config <- acme_client <- proxy, and config is pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CONFIG = {"asyncio", "socket", "ssl", "proxy", "acme_client", "uvloop", "aiohttp"}
FORBIDDEN_IN_ACME_CLIENT = {"proxy"}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("config", FORBIDDEN_IN_CONFIG), ("acme_client", FORBIDDEN_IN_ACME_CLIENT)],
)
def test_package_does_not_import_upper_layers(package: str, forbidden: set[str]) -> None:
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_top_levels(path) & forbidden
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_layering_check_sees_imports() -> None:
    # Guard against the check above passing vacuously (e.g. if the walk found no files).
    assert "config" in imported_top_levels(ROOT / "proxy" / "cli.py")
    assert len(list((ROOT / "config").rglob("*.py"))) >= 3
