"""Test helpers shared by the CLI tests: run `pyproxy` as a subprocess, find Caddy 2.6.2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The live Caddy to compare with (tests that need it skip without it).
CADDY = shutil.which("caddy") or ("/usr/bin/caddy" if Path("/usr/bin/caddy").exists() else None)


def run_pyproxy(
    *args: str,
    cwd: Path = REPO,
    env_extra: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m proxy.cli ARGS` on the interpreted source (bounded in time, never raising)."""
    env = {**os.environ, "PYPROXY_NATIVE": "0", "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
