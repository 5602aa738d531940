"""`pyproxy reload|stop|environ` (proxy.admin_client) run as real processes against a real admin
API server on loopback. The engine behind the admin API is test_admin_api.FakeEngine."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_admin_api import FakeEngine, make_config

from config.adapt import adapt_caddyfile
from proxy.admin.server import AdminServer, start_admin_server
from proxy.admin_client import determine_admin_address, environment_text

ROOT = Path(__file__).resolve().parents[2]

# Runs the verbs through argparse exactly as proxy/cli.py registers them, whether or not the
# CLI has been wired yet.
DRIVER = """
import argparse, sys
from proxy import admin_client as ac
parser = argparse.ArgumentParser(prog="pyproxy")
sub = parser.add_subparsers(dest="command", required=True)
for name in ("reload", "stop", "environ"):
    p = sub.add_parser(name)
    getattr(ac, f"add_{name}_arguments")(p)
    p.set_defaults(func=getattr(ac, f"{name}_command"))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""

CLI_TIMEOUT_S = 30


async def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, via_pyproxy: bool = False
) -> tuple[int, str, str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full_env.pop("CADDY_ADMIN", None)  # only a test that sets it wants it
    full_env.update(env or {})
    command = [sys.executable, "-m", "proxy"] if via_pyproxy else [sys.executable, "-c", DRIVER]
    proc = await asyncio.create_subprocess_exec(
        *command,
        *args,
        cwd=cwd,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FakeEngine, AdminServer]]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    engine = FakeEngine(make_config())
    # enforce_origin: the CLI must send the Origin header Caddy's CLI sends to get through.
    admin_cfg = {"listen": "127.0.0.1:0", "enforce_origin": True}
    server = await start_admin_server(engine, admin_cfg, persist=False)
    try:
        yield engine, server
    finally:
        await server.close()


def caddyfile(admin_listen: str, body: str, port: int = 8095) -> str:
    return f'{{\n\tadmin {admin_listen}\n}}\n\n:{port} {{\n\trespond "{body}"\n}}\n'


async def test_reload_finds_the_address_in_the_config(admin: Any, tmp_path: Path) -> None:
    engine, server = admin
    listen = f"127.0.0.1:{server.port}"
    text = caddyfile(listen, "v2")
    (tmp_path / "Caddyfile").write_text(text)
    code, _, err = await run_cli("reload", cwd=tmp_path)  # ./Caddyfile by default
    assert (code, err) == (0, "")
    expected, _ = adapt_caddyfile(text, "Caddyfile")
    assert engine.config == expected
    assert engine.loads[-1][1] is False
    # The new config names the same admin listener (with the real port), so it keeps serving.
    assert engine.config["admin"]["listen"] == listen


async def test_reload_address_flag_wins_and_json_configs_load(admin: Any, tmp_path: Path) -> None:
    engine, server = admin
    cfg = make_config(listen=":8096", admin={"listen": "127.0.0.1:0", "enforce_origin": True})
    path = tmp_path / "caddy.json"
    path.write_text(json.dumps(cfg))
    code, _, err = await run_cli(
        "reload", "--config", str(path), "--address", f"127.0.0.1:{server.port}", cwd=tmp_path
    )
    assert (code, err) == (0, "")
    assert engine.config == cfg


async def test_reload_unchanged_is_a_no_op_unless_forced(admin: Any, tmp_path: Path) -> None:
    engine, server = admin
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile(f"127.0.0.1:{server.port}", "same"))
    assert (await run_cli("reload", "-c", str(path), cwd=tmp_path))[0] == 0
    assert len(engine.loads) == 1
    assert (await run_cli("reload", "-c", str(path), cwd=tmp_path))[0] == 0
    assert len(engine.loads) == 1
    assert (await run_cli("reload", "-c", str(path), "--force", cwd=tmp_path))[0] == 0
    assert len(engine.loads) == 2 and engine.loads[-1][1] is True


async def test_reload_rejected_by_the_server(admin: Any, tmp_path: Path) -> None:
    engine, server = admin
    old = engine.config
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile(f"127.0.0.1:{server.port}", "busy", port=1))
    code, _, err = await run_cli("reload", "-c", str(path), cwd=tmp_path)
    assert code == 1
    assert err == (
        "Error: sending configuration to instance: caddy responded with error: HTTP 400: "
        '{"error":"loading config: loading new config: listening on :1: address already in use"}'
        "\n"
    )
    assert engine.config is old


async def test_reload_invalid_caddyfile_never_reaches_the_server(
    admin: Any, tmp_path: Path
) -> None:
    engine, server = admin
    path = tmp_path / "Caddyfile"
    path.write_text(f"{{\n\tadmin 127.0.0.1:{server.port}\n}}\n\n:8095 {{\n\tfrobnicate\n}}\n")
    code, _, err = await run_cli("reload", "-c", str(path), cwd=tmp_path)
    assert code == 1
    assert err == (
        "Error: adapting config using caddyfile: Caddyfile:6: unrecognized directive: frobnicate\n"
    ).replace("Caddyfile:6", f"{path}:6")
    assert engine.loads == []


async def test_reload_without_a_config_or_a_server(tmp_path: Path) -> None:
    code, _, err = await run_cli("reload", cwd=tmp_path)
    assert (code, err) == (1, "Error: no config file to load\n")
    # Nothing listens on this port: a clear error, exit 1.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile(f"127.0.0.1:{port}", "x"))
    code, _, err = await run_cli("reload", "-c", str(path), cwd=tmp_path)
    assert code == 1
    assert err.startswith("Error: sending configuration to instance: performing request: ")


async def test_stop(admin: Any, tmp_path: Path) -> None:
    engine, server = admin
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile(f"127.0.0.1:{server.port}", "x"))
    # The address comes from --config here (Caddy's `stop --config`).
    code, _, err = await run_cli("stop", "--config", str(path), cwd=tmp_path)
    assert (code, err) == (0, "")
    await asyncio.wait_for(engine.stopped.wait(), 5)


async def test_stop_uses_caddy_admin_default(admin: Any, tmp_path: Path) -> None:
    engine, server = admin
    env = {"CADDY_ADMIN": f"127.0.0.1:{server.port}"}
    code, _, err = await run_cli("stop", cwd=tmp_path, env=env)
    assert (code, err) == (0, "")
    await asyncio.wait_for(engine.stopped.wait(), 5)


async def test_environ(tmp_path: Path) -> None:
    envfile = tmp_path / "vars.env"
    envfile.write_text('# comment\nexport PYPROXY_TEST_A="quoted value"\nPYPROXY_TEST_B=2\n')
    env = {"XDG_CONFIG_HOME": "/cfg", "XDG_DATA_HOME": "/data"}
    code, out, err = await run_cli("environ", "--envfile", str(envfile), cwd=tmp_path, env=env)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "caddy.AppDataDir=/data/caddy" in lines
    assert "caddy.AppConfigDir=/cfg/caddy" in lines
    assert "caddy.ConfigAutosavePath=/cfg/caddy/autosave.json" in lines
    assert any(line.startswith("caddy.Version=pyproxy v") for line in lines)
    assert f"os.Getwd={tmp_path}" in lines
    assert "PYPROXY_TEST_A=quoted value" in lines
    assert "PYPROXY_TEST_B=2" in lines


def test_address_discovery_and_environment_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CADDY_ADMIN", raising=False)
    assert determine_admin_address("10.0.0.1:2020", {"admin": {"listen": "x:1"}}) == (
        "10.0.0.1:2020"
    )
    assert determine_admin_address(None, {"admin": {"listen": "unix//run/a.sock"}}) == (
        "unix//run/a.sock"
    )
    assert determine_admin_address(None, {"apps": {}}) == "localhost:2019"
    monkeypatch.setenv("CADDY_ADMIN", "127.0.0.1:3019")
    assert determine_admin_address(None, None) == "127.0.0.1:3019"
    text = environment_text({"HOME": "/home/u", "K": "v"})
    assert "caddy.AppConfigDir=/home/u/.config/caddy\n" in text
    assert text.endswith("\nK=v\n")


def _cli_has(verb: str) -> bool:
    from proxy.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return any(verb in a.choices for a in subparsers)


@pytest.mark.skipif(not _cli_has("reload"), reason="`pyproxy reload` is not in proxy.cli yet")
async def test_pyproxy_reload_verb(admin: Any, tmp_path: Path) -> None:
    engine, server = admin
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile(f"127.0.0.1:{server.port}", "via pyproxy"))
    code, _, err = await run_cli("reload", "--config", str(path), cwd=tmp_path, via_pyproxy=True)
    assert (code, err) == (0, "")
    assert engine.loads and engine.config["apps"]["http"]["servers"]["srv0"]["listen"] == [":8095"]
