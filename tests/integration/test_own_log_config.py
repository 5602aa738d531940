"""`logging.logs` levels, writers and encoders take effect in a real `pyproxy run` on loopback.

Caddy writes an access entry at info, at error for a 5xx (Server.logRequest), and a handler
error as `http.log.error` at error for a 5xx, at debug otherwise. A log's `level` is the least
severe entry it writes; the global `log` option's default log is where the process's own
(non-access) lines go, replacing stderr; a reload switches all of it.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _wait_for_line(path: Path, wanted: Callable[[str], bool], timeout_s: float = 10.0) -> list[str]:
    """The file's lines once one of them is `wanted` (bounded polling)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if any(wanted(ln) for ln in lines):
                return lines
        time.sleep(0.05)
    text = path.read_text() if path.exists() else "(no file)"
    raise AssertionError(f"timed out waiting for a line in {path}:\n{text}")


def _site(port: int, log: str = "") -> str:
    return (
        f":{port} {{\n{log}"
        '\thandle /bad {\n\t\terror "boom" 500\n\t}\n'
        '\thandle /nf {\n\t\terror "gone" 404\n\t}\n'
        "\trespond 200\n}\n"
    )


def test_access_log_level_error_keeps_only_5xx_entries(run_proxy: Any, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    port = _free_port()
    log = f"\tlog {{\n\t\toutput file {access}\n\t\tlevel ERROR\n\t}}\n"
    run_proxy("{\n\tadmin off\n}\n" + _site(port, log), port)

    assert (_get(port, "/ok"), _get(port, "/nf"), _get(port, "/bad")) == (200, 404, 500)
    lines = _wait_for_line(access, lambda ln: '"status":500' in ln)
    entries = [json.loads(ln) for ln in lines]
    # The 200 and the 404 are info entries, below ERROR: only the 500 is written.
    assert [(e["level"], e["status"], e["request"]["uri"]) for e in entries] == [
        ("error", 500, "/bad")
    ]


def test_global_log_sends_own_lines_to_a_file_in_console_format(
    run_proxy: Any, tmp_path: Path
) -> None:
    own = tmp_path / "own.log"
    port = _free_port()
    options = (
        "{\n\tadmin off\n"
        f"\tlog {{\n\t\toutput file {own}\n\t\tformat console\n\t\tlevel DEBUG\n\t}}\n}}\n"
    )
    proc = run_proxy(options + _site(port), port)
    _wait_for_line(own, lambda ln: "serving with" in ln)

    assert _get(port, "/nf") == 404
    lines = _wait_for_line(own, lambda ln: "\thttp.log.error\tgone\t" in ln)
    # zap's console layout: ts, level, logger, msg, then the other fields as one JSON object.
    ts, level, logger, msg, fields = next(ln for ln in lines if "\tgone\t" in ln).split("\t")
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}", ts)  # wall_milli
    # A 4xx handler error is debug; the console level is coloured, as Caddy's.
    assert (level, logger, msg) == ("\x1b[35mDEBUG\x1b[0m", "http.log.error", "gone")
    assert json.loads(fields)["status"] == 404
    # The default log replaced stderr: pyproxy's own lines are not there any more.
    assert "serving with" not in proc.log


def test_reload_switches_the_own_log_level(run_proxy: Any, tmp_path: Path) -> None:
    own = tmp_path / "own.log"
    port = _free_port()

    def config(level: str) -> str:
        return (
            "{\n\tadmin off\n"
            f"\tlog {{\n\t\toutput file {own}\n\t\tlevel {level}\n\t}}\n}}\n" + _site(port)
        )

    proc = run_proxy(config("ERROR"), port)
    assert (_get(port, "/nf"), _get(port, "/bad")) == (404, 500)
    lines = _wait_for_line(own, lambda ln: '"msg":"boom"' in ln)
    # At ERROR neither the debug handler error of the 404 nor info lines are written.
    assert [json.loads(ln)["msg"] for ln in lines] == ["boom"]

    (tmp_path / "Caddyfile0").write_text(config("DEBUG"))
    proc.proc.send_signal(signal.SIGUSR1)
    _wait_for_line(own, lambda ln: '"msg":"config loaded"' in ln)
    assert _get(port, "/nf") == 404
    lines = _wait_for_line(own, lambda ln: '"msg":"gone"' in ln)
    gone = json.loads(next(ln for ln in lines if '"msg":"gone"' in ln))
    assert (gone["level"], gone["logger"], gone["status"]) == ("debug", "http.log.error", 404)
