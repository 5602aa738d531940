"""The compiled build's manifest rules (proxy/native.py): used only when it matches the source."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import native

ROOT = Path(__file__).resolve().parents[2]


def make_build(tmp_path: Path, sources: dict[str, bytes]) -> tuple[Path, Path]:
    """A fake package tree with `sources` and a manifest claiming they were compiled."""
    parent = tmp_path / "src"
    build = tmp_path / "native"
    modules: dict[str, dict[str, str | None]] = {}
    for name, text in sources.items():
        src = native.source_path(name, parent)
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(text)
        so = build / (name.replace(".", "/") + native.ext_suffix())
        so.parent.mkdir(parents=True, exist_ok=True)
        so.write_bytes(b"\x7fELF")
        modules[name] = {
            "file": str(so.relative_to(build)),
            "source_sha256": native.source_digest(src),
        }
    group = build / ("abc__mypyc" + native.ext_suffix())
    group.write_bytes(b"\x7fELF")
    modules["abc__mypyc"] = {"file": group.name, "source_sha256": None}
    manifest = build / "manifest.json"
    manifest.write_text(json.dumps({"ext_suffix": native.ext_suffix(), "modules": modules}))
    return manifest, parent


SOURCES = {"proxy.http.server": b"x = 1\n", "proxy.route": b"y = 2\n"}


def test_matching_build_is_used(tmp_path: Path) -> None:
    manifest, parent = make_build(tmp_path, SOURCES)
    status = native.check_manifest(manifest, parent, environ={})
    assert status.active, status.reason
    assert set(status.modules) == set(SOURCES)
    # mypyc's shared library is answered too, under its top-level name.
    assert set(status.files) == {*SOURCES, "abc__mypyc"}
    assert status.describe().startswith("on (2 modules")


def test_no_build_runs_interpreted(tmp_path: Path) -> None:
    status = native.check_manifest(tmp_path / "missing.json", tmp_path, environ={})
    assert not status.active
    assert "not built" in status.describe()


@pytest.mark.parametrize("value", ["0", "off", "false", "no", " OFF "])
def test_switch_turns_it_off(tmp_path: Path, value: str) -> None:
    manifest, parent = make_build(tmp_path, SOURCES)
    status = native.check_manifest(manifest, parent, environ={"PYPROXY_NATIVE": value})
    assert not status.active
    assert "PYPROXY_NATIVE" in status.reason


def test_one_edited_source_makes_the_whole_build_stale(tmp_path: Path) -> None:
    manifest, parent = make_build(tmp_path, SOURCES)
    native.source_path("proxy.route", parent).write_bytes(b"y = 3\n")
    status = native.check_manifest(manifest, parent, environ={})
    assert not status.active
    assert status.files == {}
    assert "stale: route.py changed" in status.reason


def test_build_for_another_python_is_ignored(tmp_path: Path) -> None:
    manifest, parent = make_build(tmp_path, SOURCES)
    data = json.loads(manifest.read_text())
    data["ext_suffix"] = ".cpython-39-x86_64-linux-gnu.so"
    manifest.write_text(json.dumps(data))
    status = native.check_manifest(manifest, parent, environ={})
    assert not status.active
    assert "another Python" in status.reason


def test_missing_extension_file_is_ignored(tmp_path: Path) -> None:
    manifest, parent = make_build(tmp_path, SOURCES)
    data = json.loads(manifest.read_text())
    (manifest.parent / data["modules"]["proxy.route"]["file"]).unlink()
    status = native.check_manifest(manifest, parent, environ={})
    assert not status.active
    assert "missing" in status.reason


@pytest.mark.parametrize("text", ["", "{", "[]", '{"ext_suffix": 1}'])
def test_malformed_manifest_is_ignored(tmp_path: Path, text: str) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(text)
    status = native.check_manifest(manifest, tmp_path, environ={})
    assert not status.active
    assert status.reason


def _docstring_lines(path: Path) -> list[str]:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=True)
    return [line.strip() for line in (doc or "").splitlines()]


def test_compiled_modules_are_exactly_the_marked_ones() -> None:
    # The quick scan of native.compiled_modules agrees with Python's own reading of every
    # module docstring of the package.
    package = ROOT / "proxy"
    marked = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if rel.parts[0].startswith("_native"):
            continue
        if native.COMPILED_MARKER in _docstring_lines(path):
            marked.append(".".join(("proxy", *rel.with_suffix("").parts)))
    compiled = native.compiled_modules()
    assert compiled == tuple(sorted(marked))
    assert "proxy.http.server" in compiled and "proxy.http.fields" in compiled
    for name in compiled:
        assert native.source_path(name).is_file(), name


def test_compiled_modules_reads_only_the_docstring_line(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    files = {
        "a.py": f'"""A module.\n\n{native.COMPILED_MARKER}\n"""\n',
        "sub/__init__.py": f'"""Sub.\n{native.COMPILED_MARKER}\n"""\n',
        "sub/b.py": f'"""B.\n\n    {native.COMPILED_MARKER}\n"""\nx = 1\n',
        # Not marked: in a sentence, after the docstring, no docstring, a build directory.
        "c.py": f'"""C, see {native.COMPILED_MARKER} there."""\n',
        "d.py": f'"""D."""\n\nNOTE = """\n{native.COMPILED_MARKER}\n"""\n',
        "e.py": f"# {native.COMPILED_MARKER}\nx = 1\n",
        "_native/f.py": f'"""F.\n{native.COMPILED_MARKER}\n"""\n',
    }
    for rel, text in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert native.compiled_modules(package) == ("pkg.a", "pkg.sub", "pkg.sub.b")


def _module_file(env_native: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYPROXY_NATIVE=env_native)
    out = subprocess.run(
        [sys.executable, "-c", "import proxy.http.server as s; print(s.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip()


def test_switch_off_imports_the_source() -> None:
    assert _module_file("0").endswith("proxy/http/server.py")


@pytest.mark.skipif(not native.check_manifest().active, reason="no up-to-date native build here")
def test_built_tree_imports_the_compiled_module() -> None:
    assert _module_file("1").endswith(native.ext_suffix())
