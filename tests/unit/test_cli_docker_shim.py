"""docker/caddy, the `caddy` command inside the image: `version` and `run --resume`."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / "docker" / "caddy"


def _fake_pyproxy(tmp_path: Path) -> Path:
    """A `pyproxy` that runs this tree's CLI for `version` and records the argv of `run`."""
    script = tmp_path / "pyproxy"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = run ]; then\n'
        '  if [ "$2" = --help ]; then echo "usage: pyproxy run [--config]"; exit 0; fi\n'
        f'  shift; {sys.executable} -c "import json,sys; print(json.dumps(sys.argv[1:]))" "$@"\n'
        "  exit 0\n"
        "fi\n"
        f'cd {REPO} && PYPROXY_NATIVE=0 exec {sys.executable} -m proxy.cli "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _shim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PYPROXY": str(_fake_pyproxy(tmp_path)),
    }
    return subprocess.run(
        ["bash", str(SHIM), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_is_one_caddy_style_line(tmp_path: Path) -> None:
    from proxy import __version__

    result = _shim(tmp_path, "version")
    assert result.returncode == 0
    # Caddy: `v2.6.2 h1:...`; scripts match ^v2\. and read the first field.
    assert result.stdout == f"v2.6.2 pyproxy-{__version__}\n"
    assert re.match(r"^v2\.\d+\.\d+ ", result.stdout)


def test_resume_loads_autosave_when_present(tmp_path: Path) -> None:
    saved = tmp_path / "config" / "caddy" / "autosave.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps({"apps": {}}))
    result = _shim(tmp_path, "run", "--config", "Caddyfile", "--resume")
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    # The autosave comes last, so it wins over --config, as caddy's --resume does.
    assert argv[-4:] == ["--config", str(saved), "--adapter", "json"]
    assert "no autosaved" not in result.stderr


def test_resume_without_autosave_falls_back_to_config(tmp_path: Path) -> None:
    result = _shim(tmp_path, "run", "--config", "Caddyfile", "--resume")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["--config", "Caddyfile"]
    assert "no autosaved config at" in result.stderr
    assert str(tmp_path / "config" / "caddy" / "autosave.json") in result.stderr


@pytest.mark.parametrize("verb", ["help", "--help"])
def test_help_exits_0(tmp_path: Path, verb: str) -> None:
    result = _shim(tmp_path, verb)
    assert result.returncode == 0
    assert "Usage: caddy <command>" in result.stdout
