"""`pyproxy list-modules`: Caddy's module IDs and output shape."""

from __future__ import annotations

import subprocess

import pytest
from clikit import CADDY

from proxy import __version__, cli


def test_lists_supported_handlers_by_caddy_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list-modules"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "http.handlers.reverse_proxy" in lines
    assert "caddy.adapters.caddyfile" in lines
    assert "http.handlers.file_server" not in lines  # accepted by the model, not served
    assert lines[-5:] == [
        f"  Standard modules: {len(cli.supported_modules())}",
        "",
        "  Non-standard modules: 0",
        "",
        "  Unknown modules: 0",
    ]


def test_versions_and_packages_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list-modules", "--versions", "--packages"]) == 0
    out = capsys.readouterr().out
    assert f"http.handlers.reverse_proxy pyproxy v{__version__}\n" in out


@pytest.mark.skipif(CADDY is None, reason="needs /usr/bin/caddy")
def test_every_listed_module_is_a_caddy_module() -> None:
    assert CADDY is not None
    caddy = subprocess.run(
        [CADDY, "list-modules", "--versions", "--packages"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert caddy.returncode == 0  # Caddy accepts the same flags
    caddy_ids = {line.split()[0] for line in caddy.stdout.splitlines() if line and line[0] != " "}
    assert set(cli.supported_modules()) <= caddy_ids
