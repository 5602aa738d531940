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


def config_import_graph() -> dict[str, set[str]]:
    """Each module of config/ → the config modules it imports, at the top or inside functions.

    Imports inside functions count: deferring an import only hides a circle, it does not break
    it (issue #14: the adapt modules imported each other to share Go value parsers).
    """
    modules: dict[str, Path] = {}
    for path in sorted((ROOT / "config").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                deps.update(t for t in [node.module, *targets] if t in modules)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
        # A submodule's import of its own package (`from config.adapt.helper import` names
        # config.adapt.helper, not config.adapt) is not an edge to the package.
        graph[name] = deps - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_config_modules_import_no_circle() -> None:
    graph = config_import_graph()
    # The check sees the imports it is about (guards against passing vacuously).
    assert "config.go_values" in graph["config.adapt.reverse_proxy"]
    assert "config.adapt.tls_app" in graph["config.adapt.global_options"]
    assert import_cycles(graph) == []


def test_import_cycle_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_go_values_is_a_leaf() -> None:
    """config/go_values.py imports nothing from the project, so every layer may use it."""
    project = {"config", "acme_client", "proxy"}
    assert imported_top_levels(ROOT / "config" / "go_values.py") & project == set()


# proxy/admin/ (issue #14): the decisions (config paths, the listen address and origin policy,
# the autosave) are pure, so they are testable without a server; only api.py (aiohttp) and
# server.py (the listener) touch the network.
ADMIN_PURE_MODULES = ("config_paths", "origins", "autosave", "errors", "controller")
FORBIDDEN_IN_ADMIN_PURE = {"aiohttp", "asyncio", "socket", "ssl", "uvloop"}
ADMIN_IMPURE_MODULES = {"proxy.admin.api", "proxy.admin.server", "proxy.admin"}


def imported_modules(path: Path) -> set[str]:
    """Full dotted names of every absolute import in `path` (`from a.b import c` gives a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ADMIN_PURE_MODULES)
def test_admin_decisions_are_pure(module: str) -> None:
    path = ROOT / "proxy" / "admin" / f"{module}.py"
    assert imported_top_levels(path) & FORBIDDEN_IN_ADMIN_PURE == set()
    # A pure module may use its pure siblings, never the server side (nor the package, whose
    # __init__ imports the server side).
    assert imported_modules(path) & ADMIN_IMPURE_MODULES == set()


def test_admin_purity_check_sees_imports() -> None:
    admin = ROOT / "proxy" / "admin"
    assert "aiohttp" in imported_top_levels(admin / "api.py")
    assert "proxy.admin.api" in imported_modules(admin / "server.py")
