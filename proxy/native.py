"""Optional compiled build of the hot path: the same Python source, compiled by mypyc.

The request path (HTTP server, upstream client, routing, reverse_proxy, pools) is plain typed
Python. The modules to compile say so in their docstring, with the COMPILED_MARKER line;
`python -m proxy.native_build` finds them by that line (`compiled_modules()`), compiles them
with mypyc into `proxy/_native/` and writes a manifest of the modules and the source hashes
they were built from. At import time (`proxy/__init__.py`) `install()` puts a finder in front
of the normal import system that loads the compiled modules the manifest lists instead of their
.py files, but only when every one's source is byte-identical to what was built (an edited file,
its marker removed included, makes the whole compiled group stale: its modules call each other
directly, so mixing old and new code is never allowed) and the build is for this interpreter.
Anything else, or `PYPROXY_NATIVE=0`, runs the interpreted source. A module newly marked runs
interpreted until the next build (compiled modules may call interpreted ones).

Why mypyc rather than a C extension: the code stays one Python source that runs anywhere; the
compiled build only removes interpreter overhead (attribute access, calls), roughly halving the
Python CPU per proxied request (bench/engine/README.md).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Final

PACKAGE_DIR = Path(__file__).resolve().parent
NATIVE_DIR = PACKAGE_DIR / "_native"
MANIFEST = NATIVE_DIR / "manifest.json"
ENV_SWITCH = "PYPROXY_NATIVE"
REBUILD = "rebuild: python -m proxy.native_build"
# The line a module's docstring carries, on its own, when the module is compiled. mypyc
# compiles the typed Python these modules are written in, exception subclasses included
# (proxy/http/hpack.py has them); what it cannot take is dynamic: monkeypatching, attributes
# added at run time, class-level aliases of methods.
COMPILED_MARKER: Final = "Compiled with mypyc (proxy/native.py)."


def compiled_modules(package_dir: Path | None = None) -> tuple[str, ...]:
    """The modules of the package whose docstring has the COMPILED_MARKER line, by name.

    Read by the build (proxy/native_build.py) and the tests, never at start: the manifest of a
    build lists what it compiled, and `install()` goes by that list alone (scanning the ~60
    sources takes about 2 ms warm, more from a cold disk, on every process start).
    """
    root = package_dir if package_dir is not None else PACKAGE_DIR
    found: list[str] = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0].startswith("_native"):
            continue
        if _docstring_has_marker(path.read_text(encoding="utf-8")):
            parts = (root.name, *rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(".".join(parts))
    return tuple(sorted(found))


def _docstring_has_marker(text: str) -> bool:
    """The module docstring (a leading triple-quoted string) has the marker as a line."""
    if not text.startswith('"""'):
        return False
    end = text.find('"""', 3)
    if end < 0:
        return False
    return any(line.strip() == COMPILED_MARKER for line in text[3:end].splitlines())


def source_path(module: str, package_parent: Path | None = None) -> Path:
    """The .py file of a module of this project (`proxy.http.server` → proxy/http/server.py)."""
    root = package_parent if package_parent is not None else PACKAGE_DIR.parent
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ext_suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX") or "")


@dataclass
class NativeStatus:
    """What `install()` decided, for `pyproxy version` and the startup log."""

    active: bool = False
    reason: str = "not built (python -m proxy.native_build)"
    modules: tuple[str, ...] = ()
    files: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> str:
        if self.active:
            return f"on ({len(self.modules)} modules compiled with mypyc)"
        return f"off: {self.reason}"


def check_manifest(
    manifest_path: Path = MANIFEST,
    package_parent: Path | None = None,
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> NativeStatus:
    """Decide whether the compiled build in `manifest_path` may be used, and with which files."""
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return NativeStatus(reason=f"disabled by {ENV_SWITCH}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        return NativeStatus()
    except (OSError, ValueError) as exc:
        return NativeStatus(reason=f"unreadable manifest {manifest_path}: {exc}")
    if not isinstance(manifest, dict) or manifest.get("ext_suffix") != ext_suffix():
        return NativeStatus(reason=f"built for another Python ({REBUILD})")
    modules = manifest.get("modules")
    if not isinstance(modules, dict) or not modules:
        return NativeStatus(reason=f"manifest {manifest_path} lists no modules")
    files: dict[str, Path] = {}
    compiled: list[str] = []
    for name, entry in modules.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            return NativeStatus(reason=f"manifest entry for {name} is malformed")
        so = manifest_path.parent / entry["file"]
        if not so.is_file():
            return NativeStatus(reason=f"missing {so}")
        digest = entry.get("source_sha256")
        if digest is not None:  # None: mypyc's shared runtime library, no source of its own
            src = source_path(name, package_parent)
            try:
                current = source_digest(src)
            except OSError:
                return NativeStatus(reason=f"source {src} unreadable")
            if current != digest:
                return NativeStatus(reason=f"stale: {src.name} changed since the build ({REBUILD})")
            compiled.append(name)
        files[name] = so
    return NativeStatus(active=True, reason="", modules=tuple(compiled), files=files)


class _NativeFinder(importlib.abc.MetaPathFinder):
    """Answers imports of the compiled modules (and mypyc's group library) with their .so."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        so = self.files.get(fullname)
        if so is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(so))
        return importlib.util.spec_from_file_location(fullname, str(so), loader=loader)


STATUS = NativeStatus()


def install() -> NativeStatus:
    """Install the finder when the compiled build matches the sources (once per process)."""
    global STATUS
    if any(isinstance(f, _NativeFinder) for f in sys.meta_path):
        return STATUS
    STATUS = check_manifest()
    already = [m for m in STATUS.modules if m in sys.modules]
    if STATUS.active and already:
        # Too late for these (imported before proxy/__init__ ran): never mix the two builds.
        STATUS = NativeStatus(reason=f"{already[0]} was imported before proxy/__init__")
    if STATUS.active:
        sys.meta_path.insert(0, _NativeFinder(STATUS.files))
    return STATUS
