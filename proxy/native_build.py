"""Compile the hot-path modules with mypyc into proxy/_native/ (see proxy/native.py).

    python -m proxy.native_build [--jobs N] [--quiet]

Needs mypy (which ships mypyc), a C compiler and the Python headers (Debian: gcc, python3-dev).
Works on a source checkout and on an installed package alike: it compiles the .py files next to
this one and writes the extension modules plus a manifest of the sources' hashes into
`proxy/_native/`. The previous build is replaced only when the new one succeeded. Exit status
0 on success, 1 with the compiler's complaint otherwise (pyproxy then runs interpreted).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from proxy.native import (
    MANIFEST,
    NATIVE_DIR,
    PACKAGE_DIR,
    compiled_modules,
    ext_suffix,
    source_digest,
    source_path,
)

# The top-level packages of this project (the compiled modules import from all three).
PROJECT_PACKAGES = ("config", "acme_client", "proxy")


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def build(jobs: int | None = None, quiet: bool = False) -> dict[str, object]:
    """Compile the modules marked compiled (native.compiled_modules); returns the manifest
    written, which lists them. Raises on any failure."""
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as exc:
        raise RuntimeError(f"mypyc is not installed ({exc}); pip install mypy") from exc

    package_parent = PACKAGE_DIR.parent
    names = compiled_modules()
    if not names:
        raise RuntimeError(f"no module of {PACKAGE_DIR} is marked compiled")
    rel_paths = [str(source_path(m, package_parent).relative_to(package_parent)) for m in names]
    digests = {m: source_digest(source_path(m, package_parent)) for m in names}
    with tempfile.TemporaryDirectory(prefix="pyproxy-native-") as tmp_name:
        tmp = Path(tmp_name)
        # Compile a copy of the project's packages: in an installed package's site-packages,
        # mypy would otherwise analyse every neighbouring distribution too (and trip on them).
        src = tmp / "src"
        for package in PROJECT_PACKAGES:
            shutil.copytree(
                package_parent / package,
                src / package,
                ignore=shutil.ignore_patterns("__pycache__", "_native", "_native.new"),
            )
        out = io.StringIO()
        redirect = contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext()
        # mypyc names modules after the paths relative to the working directory. Untyped
        # third-party modules (httptools, uvloop) are plain Python objects to it.
        try:
            with _cwd(src), redirect:
                extensions = mypycify(
                    ["--ignore-missing-imports", *rel_paths],
                    opt_level="3",
                    multi_file=True,
                    target_dir=str(tmp / "c"),
                )
                dist = Distribution({"name": "pyproxy-native", "ext_modules": extensions})
                cmd = dist.get_command_obj("build_ext")
                cmd.build_lib = str(tmp / "lib")
                cmd.build_temp = str(tmp / "obj")
                cmd.parallel = jobs or os.cpu_count() or 1
                dist.run_command("build_ext")
        except (Exception, SystemExit) as exc:  # mypyc exits on type errors
            detail = out.getvalue().strip()[-2000:]
            raise RuntimeError(f"{exc or type(exc).__name__}\n{detail}".strip()) from exc
        suffix = ext_suffix()
        modules: dict[str, dict[str, str | None]] = {}
        for so in sorted((tmp / "lib").rglob(f"*{suffix}")):
            rel = so.relative_to(tmp / "lib")
            name = ".".join(rel.parts)[: -len(suffix)]
            modules[name] = {"file": str(rel), "source_sha256": digests.get(name)}
        missing = [m for m in names if m not in modules]
        if missing:
            raise RuntimeError(f"mypyc produced no extension for {', '.join(missing)}")
        manifest: dict[str, object] = {
            "ext_suffix": suffix,
            "python": sys.version.split()[0],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "modules": modules,
        }
        staging = NATIVE_DIR.with_name("_native.new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(tmp / "lib", staging)
        (staging / MANIFEST.name).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(NATIVE_DIR, ignore_errors=True)
        staging.rename(NATIVE_DIR)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m proxy.native_build", description=__doc__)
    ap.add_argument("--jobs", type=int, default=None, help="parallel C compilations")
    ap.add_argument("--quiet", action="store_true", help="only report the result")
    args = ap.parse_args(argv)
    started = time.monotonic()
    try:
        manifest = build(args.jobs, args.quiet)
    except Exception as exc:  # the compiler's complaint, whatever it is, then exit 1
        print(f"native build failed: {exc}", file=sys.stderr)
        return 1
    modules: dict[str, dict[str, str | None]] = manifest["modules"]  # type: ignore[assignment]
    count = sum(1 for m in modules.values() if m["source_sha256"])
    took = time.monotonic() - started
    print(f"native build: {count} modules compiled into {NATIVE_DIR} in {took:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
