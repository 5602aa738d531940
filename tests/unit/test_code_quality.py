"""The quality bar as tests: the whole tree type-checks (mypy) and lints clean (ruff).

Run as subprocesses with the project's own settings (pyproject.toml), so CI fails on a type
error or a lint finding exactly as a developer running the tools would see it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_mypy_clean(tmp_path: Path) -> None:
    # A private cache: a stale or concurrent one must not decide the outcome.
    result = run_tool("mypy", "--cache-dir", str(tmp_path / "mypy-cache"), ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format_clean() -> None:
    lint = run_tool("ruff", "check", "--no-cache", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run_tool("ruff", "format", "--check", "--no-cache", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
