"""Optional compiled build of the hot path: the same Python source, compiled by mypyc.

The request path (HTTP server, upstream client, routing, reverse_proxy, pools) is plain typed
Python. `python -m proxy.native_build` compiles those modules with mypyc into `proxy/_native/`
together with a manifest of the source hashes they were built from. At import time
(`proxy/__init__.py`) `install()` puts a finder in front of the normal import system that loads
the compiled module instead of the .py file, but only when every compiled module's source is
byte-identical to what was built (an edited file makes the whole compiled group stale: its
modules call each other directly, so mixing old and new code is never allowed) and the build is
for this interpreter. Anything else, or `PYPROXY_NATIVE=0`, runs the interpreted source.

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

# The modules compiled together, in the order a request meets them. Exceptions that subclass
# builtin exceptions (mypyc cannot compile those) live in modules that are not listed here.
NATIVE_MODULES: tuple[str, ...] = (
    "proxy.http.server",
    "proxy.http.h2server",
    "proxy.http.h2conn",
    "proxy.http.h2frames",
    "proxy.http.h2limits",
    "proxy.http.wire",
    "proxy.http.request",
    "proxy.http.exchange",
    "proxy.http.runtime",
    "proxy.http.client",
    "proxy.route",
    "proxy.handlers.subroute",
    "proxy.handlers.reverse_proxy",
    "proxy.upstream.pool",
    "proxy.upstream.upstream",
    "proxy.upstream.selection",
    "proxy.header_ops",
    "proxy.http.hpack",
    "proxy.http.hpack_tables",
)

PACKAGE_DIR = Path(__file__).resolve().parent
NATIVE_DIR = PACKAGE_DIR / "_native"
MANIFEST = NATIVE_DIR / "manifest.json"
ENV_SWITCH = "PYPROXY_NATIVE"
REBUILD = "rebuild: python -m proxy.native_build"


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
    already = [m for m in NATIVE_MODULES if m in sys.modules]
    STATUS = check_manifest()
    if STATUS.active and already:
        # Too late for these (imported before proxy/__init__ ran): never mix the two builds.
        STATUS = NativeStatus(reason=f"{already[0]} was imported before proxy/__init__")
    if STATUS.active:
        sys.meta_path.insert(0, _NativeFinder(STATUS.files))
    return STATUS
