"""`pyproxy run --pidfile/--environ/--resume`, shown with configs that fail to load, so that
nothing binds: the flags act before the config is loaded, as in `caddy run`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from clikit import run_pyproxy


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    return run_pyproxy("run", *args, cwd=tmp_path, env_extra=xdg)


def _bad_caddyfile(tmp_path: Path) -> Path:
    path = tmp_path / "Caddyfile"
    path.write_text("example.com {\n\trespond hi\n")
    return path


def test_pidfile_and_environ_before_loading(tmp_path: Path) -> None:
    pidfile = tmp_path / "pyproxy.pid"
    result = _run(
        tmp_path, "--pidfile", str(pidfile), "--environ", "--config", str(_bad_caddyfile(tmp_path))
    )
    assert result.returncode == 1
    assert pidfile.read_text().strip().isdigit()
    assert f"caddy.ConfigAutosavePath={tmp_path / 'xdg' / 'caddy' / 'autosave.json'}" in (
        result.stdout.splitlines()
    )
    assert "expecting '}'" in result.stderr


def test_resume_loads_the_autosave_over_config(tmp_path: Path) -> None:
    saved = tmp_path / "xdg" / "caddy" / "autosave.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps({"apps": {"http": {"servers": {"a": {"listen": 5}}}}}))
    result = _run(tmp_path, "--resume", "--config", str(_bad_caddyfile(tmp_path)))
    assert result.returncode == 1
    # The autosave's error, not the Caddyfile's: --resume won.
    assert "apps.http.servers.a.listen" in result.stderr
    assert "expecting '}'" not in result.stderr


def test_resume_without_autosave_uses_config(tmp_path: Path) -> None:
    result = _run(tmp_path, "--resume", "--config", str(_bad_caddyfile(tmp_path)))
    assert result.returncode == 1
    assert "no autosaved config at" in result.stderr
    assert "expecting '}'" in result.stderr
