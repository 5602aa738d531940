"""Log levels, include/exclude and writers of `logging.logs` are applied, not just validated:
access entries (proxy.logs.AccessLog), pyproxy's own log (proxy.logs.OwnLogHandler) and what
config.model refuses because pyproxy cannot honour it (sampling, net, rolling)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.model import load_model
from proxy.logs import AccessLog, OwnLogHandler, level_number, logger_allowed


def _record(name: str, level: int, msg: str = "m") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (), None)


def test_logger_allowed_follows_caddys_longest_namespace_rule() -> None:
    assert logger_allowed([], [], "anything")
    assert logger_allowed(["http.log.access"], [], "http.log.access.log0")
    assert not logger_allowed(["http.log.access.log0"], [], "http.log.access.log01")
    assert not logger_allowed(["http"], [], "tls")
    assert not logger_allowed([], ["http.log.access.log0"], "http.log.access.log0")
    assert logger_allowed([], ["http.log.access.log0"], "http.log.error")
    # The longer namespace wins: include http, exclude http.log -> http.handlers passes.
    assert logger_allowed(["http"], ["http.log"], "http.handlers.reverse_proxy")
    assert not logger_allowed(["http"], ["http.log"], "http.log.error")
    assert logger_allowed(["http.log.error"], ["http.log"], "http.log.error")
    # `*` excludes every named logger.
    assert not logger_allowed([], ["*"], "tls")


def test_levels_are_zaps_order() -> None:
    names = ["DEBUG", "INFO", "WARN", "ERROR", "PANIC", "FATAL"]
    assert [level_number(n) for n in names] == sorted(level_number(n) for n in names)
    assert len({level_number(n) for n in names}) == len(names)
    assert level_number("") == level_number("info") == logging.INFO
    assert level_number("warning") == level_number("WARN")


def _entry(level: str, status: int) -> dict[str, Any]:
    return {
        "level": level,
        "ts": 1.0,
        "logger": "http.log.access.log0",
        "msg": "handled request",
        "status": status,
    }


def test_access_log_level_error_drops_info_entries(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    access = AccessLog(
        {
            "logs": {
                "default": {"writer": {"output": "discard"}},
                "log0": {
                    "writer": {"output": "file", "filename": str(path)},
                    "level": "ERROR",
                    "include": ["http.log.access.log0"],
                },
            }
        }
    )
    access.write("http.log.access.log0", _entry("info", 404))
    access.write("http.log.access.log0", _entry("error", 502))
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert [(e["level"], e["status"]) for e in lines] == [("error", 502)]


def test_own_log_honours_writer_encoder_level_and_reconfigures(tmp_path: Path) -> None:
    path = tmp_path / "own.log"
    fallback = io.StringIO()
    handler = OwnLogHandler(fallback)
    cfg = {
        "logs": {
            "default": {
                "writer": {"output": "file", "filename": str(path)},
                "encoder": {"format": "console", "level_format": "lower"},
                "level": "DEBUG",
            }
        }
    }
    root = logging.getLogger()
    saved_level = root.level
    try:
        handler.configure(cfg)
        assert root.level == logging.DEBUG  # debug records are not dropped before the handler
        handler.handle(_record("pyproxy.certs", logging.DEBUG, "checking"))
        ts, level, logger, msg = path.read_text().rstrip("\n").split("\t")
        assert ts.startswith("20") and (level, logger, msg) == ("debug", "tls", "checking")
        assert fallback.getvalue() == ""  # the default log replaces stderr, as in Caddy

        # A reload to level ERROR: info records stop, errors still go in.
        cfg["logs"]["default"]["level"] = "ERROR"
        handler.configure(cfg)
        handler.handle(_record("pyproxy", logging.INFO, "serving"))
        handler.handle(_record("http.log.error", logging.ERROR, "boom"))
        lines = path.read_text().splitlines()
        assert len(lines) == 2 and lines[1].split("\t")[1:] == ["error", "http.log.error", "boom"]

        # Back to no logging config: Caddy's default log (stderr here: the fallback), INFO.
        handler.configure({})
        assert root.level == logging.INFO
        handler.handle(_record("pyproxy.admin", logging.INFO, "again"))
        assert json.loads(fallback.getvalue())["logger"] == "admin"
    finally:
        root.setLevel(saved_level)


def test_own_log_named_logs_take_what_they_include(tmp_path: Path) -> None:
    tls_path, rest_path = tmp_path / "tls.log", tmp_path / "rest.log"
    handler = OwnLogHandler(io.StringIO())
    root = logging.getLogger()
    saved_level = root.level
    try:
        handler.configure(
            {
                "logs": {
                    "default": {
                        "writer": {"output": "file", "filename": str(rest_path)},
                        "exclude": ["tls"],
                    },
                    "certs": {
                        "writer": {"output": "file", "filename": str(tls_path)},
                        "include": ["tls"],
                    },
                }
            }
        )
        handler.handle(_record("pyproxy.tls", logging.WARNING, "renewing"))
        handler.handle(_record("pyproxy.admin", logging.WARNING, "admin"))
        assert [json.loads(ln)["msg"] for ln in tls_path.read_text().splitlines()] == ["renewing"]
        assert [json.loads(ln)["msg"] for ln in rest_path.read_text().splitlines()] == ["admin"]
    finally:
        root.setLevel(saved_level)


def _with_log(log: dict[str, Any]) -> dict[str, Any]:
    return {"logging": {"logs": {"default": log}}}


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ({"sampling": {"interval": 1000}}, "logging.logs.default.sampling: not supported"),
        (
            {"writer": {"output": "net", "address": "127.0.0.1:9"}},
            "logging.logs.default.writer.output: unknown module: caddy.logging.writers.net",
        ),
        (
            {"writer": {"output": "file", "filename": "/tmp/x", "roll_size_mb": 5}},
            "logging.logs.default.writer.roll_size_mb: field 'roll_size_mb' is not supported",
        ),
        (
            {"writer": {"output": "file", "filename": "/tmp/x", "roll": True}},
            "logging.logs.default.writer.roll: log rolling is not supported",
        ),
        (
            {"writer": {"output": "file", "filename": "/tmp/x", "rol": False}},
            'logging.logs.default.writer: json: unknown field "rol"',
        ),
        (
            {"writer": {"output": "stderr", "filename": "/tmp/x"}},
            'logging.logs.default.writer: json: unknown field "filename"',
        ),
        ({"writer": {"output": "file"}}, "logging.logs.default.writer.filename: a file writer"),
        ({"level": "LOUD"}, "logging.logs.default.level: unrecognized log level 'LOUD'"),
    ],
)
def test_logs_pyproxy_cannot_honour_are_config_errors(log: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(_with_log(log))
    assert message in str(err.value)


def test_logs_pyproxy_honours_load() -> None:
    model = load_model(
        _with_log(
            {
                "writer": {"output": "file", "filename": "/tmp/x", "roll": False},
                "encoder": {"format": "console"},
                "level": "PANIC",
                "exclude": ["http.log.access.log0"],
            }
        )
    )
    assert model.logging["logs"]["default"]["level"] == "PANIC"


def test_a_log_file_that_cannot_be_opened_fails_the_load(tmp_path: Path) -> None:
    from proxy.logs import check_log_writers

    (tmp_path / "plain").write_text("")
    bad = tmp_path / "plain" / "own.log"  # under a regular file: no directory can be made
    good = tmp_path / "good.log"
    cfg = {
        "logs": {
            "access": {"writer": {"output": "file", "filename": str(good)}},
            "default": {"writer": {"output": "file", "filename": str(bad)}},
        }
    }
    with pytest.raises(ConfigError) as err:
        check_log_writers(cfg)
    assert str(err.value).startswith("logging.logs.default.writer: opening log file: ")
    check_log_writers({"logs": {"access": cfg["logs"]["access"]}})
    assert good.exists()
