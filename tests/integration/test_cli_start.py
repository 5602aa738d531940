"""`pyproxy start` (like `caddy start`) as real processes on loopback: it returns once the
background instance serves, says so in Caddy's words, and `pyproxy stop` ends that instance."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYPROXY, ROOT, ThreadedOrigin
from enginekit import free_port

CLI_TIMEOUT_S = 60.0
GONE_TIMEOUT_S = 15.0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its reaper is late


@pytest.fixture
def started_pids() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:  # a failed test must not leave its background instance behind
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)


def _pyproxy(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    # Files, not pipes: the background instance keeps the shared stdout and stderr open, as
    # `caddy start`'s child does, so a pipe would never reach end-of-file.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYPROXY_WORKERS": "1",
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }
    env.pop("CADDY_ADMIN", None)
    out_path, err_path = tmp_path / "start.out", tmp_path / "start.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        code = subprocess.run(
            [*PYPROXY, *args], stdout=out, stderr=err, cwd=tmp_path, env=env, timeout=CLI_TIMEOUT_S
        ).returncode
    return code, out_path.read_text(), err_path.read_text()


def test_start_serves_in_the_background_until_stop(tmp_path: Path, started_pids: list[int]) -> None:
    origin = ThreadedOrigin().start()
    try:
        port, admin_port = free_port(), free_port()
        caddyfile = tmp_path / "Caddyfile"
        caddyfile.write_text(
            f"{{\n\tadmin 127.0.0.1:{admin_port}\n}}\n"
            f"http://127.0.0.1:{port} {{\n\treverse_proxy 127.0.0.1:{origin.port}\n}}\n"
        )
        pidfile = tmp_path / "pyproxy.pid"
        code, out, err = _pyproxy(
            tmp_path, "start", "--config", str(caddyfile), "--pidfile", str(pidfile)
        )
        assert code == 0, err
        match = re.fullmatch(
            r"Successfully started pyproxy \(pid=(\d+)\) - pyproxy is running in the background\n",
            out.splitlines(keepends=True)[0],
        )
        assert match, out
        pid = int(match.group(1))
        started_pids.append(pid)
        assert pidfile.read_text().strip() == str(pid)
        # `start` returned, so the instance must already serve: no waiting here.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/headers")
        assert conn.getresponse().status == 200
        conn.close()
        assert any(r["path"] == "/headers" for r in origin.requests)

        # A second start on the same admin address would confirm the first instance: refused.
        code, out, err = _pyproxy(tmp_path, "start", "--config", str(caddyfile))
        assert (code, out) == (1, "")
        assert f"already running with its admin endpoint at 127.0.0.1:{admin_port}" in err

        code, _, err = _pyproxy(tmp_path, "stop", "--address", f"127.0.0.1:{admin_port}")
        assert code == 0, err
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        origin.stop()


def test_start_with_a_bad_config_exits_1_with_the_error(
    tmp_path: Path, started_pids: list[int]
) -> None:
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(
        f"{{\n\tadmin 127.0.0.1:{free_port()}\n}}\n"
        f"http://127.0.0.1:{free_port()} {{\n\treverse_proxy www:99999\n}}\n"
    )
    code, out, err = _pyproxy(tmp_path, "start", "--config", str(caddyfile))
    assert code == 1
    assert "Successfully started" not in out
    assert "parsing upstream 'www:99999'" in err and "Caddyfile:5" in err
    assert err.endswith("Error: pyproxy process exited with error: exit status 1\n")


def test_start_refuses_a_config_without_admin_endpoint(tmp_path: Path) -> None:
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(
        f"{{\n\tadmin off\n}}\nhttp://127.0.0.1:{free_port()} {{\n\trespond hi\n}}\n"
    )
    code, out, err = _pyproxy(tmp_path, "start", "--config", str(caddyfile))
    assert (code, out) == (1, "")
    assert "use 'pyproxy run' instead" in err
