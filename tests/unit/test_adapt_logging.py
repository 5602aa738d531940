"""The `log` directive and global option, and the `logging` config (logging_config.py)."""

from __future__ import annotations

from typing import Any

import pytest

from config.adapt import adapt_caddyfile
from config.errors import ConfigError


def adapt(text: str) -> dict[str, Any]:
    config, _ = adapt_caddyfile(text, "Caddyfile")
    return config


def test_file_output_options() -> None:
    text = (
        "a.com {\n\tlog {\n\t\toutput file /l/a.log {\n\t\t\troll_size 5MiB\n"
        "\t\t\troll_keep 3\n\t\t\troll_keep_for 48h\n\t\t\troll_uncompressed\n\t\t}\n"
        "\t\tformat json\n\t\tlevel ERROR\n\t}\n}\n"
    )
    log0 = adapt(text)["logging"]["logs"]["log0"]
    assert log0["writer"] == {
        "output": "file",
        "filename": "/l/a.log",
        "roll_size_mb": 5,
        "roll_keep": 3,
        "roll_keep_days": 2,
        "roll_gzip": False,
    }
    assert log0["encoder"] == {"format": "json"}
    assert log0["level"] == "ERROR"


def test_named_site_log_and_hostnames_override() -> None:
    text = "a.com, b.com {\n\tlog access {\n\t\thostnames b.com\n\t\toutput stdout\n\t}\n}\n"
    config = adapt(text)
    srv_logs = config["apps"]["http"]["servers"]["srv0"]["logs"]
    assert srv_logs == {"logger_names": {"b.com": ["access"]}}
    assert config["logging"]["logs"]["access"]["include"] == ["http.log.access.access"]


def test_catch_all_site_log_becomes_default_logger_name() -> None:
    text = ":8080 {\n\tlog {\n\t\toutput stderr\n\t}\n}\n"
    srv_logs = adapt(text)["apps"]["http"]["servers"]["srv0"]["logs"]
    assert srv_logs == {"default_logger_name": "log0"}


def test_log_counter_is_shared_across_sites() -> None:
    text = (
        "a.com {\n\tlog {\n\t\toutput stdout\n\t}\n}\nb.com {\n\tlog {\n\t\toutput stderr\n\t}\n}\n"
    )
    logs = adapt(text)["logging"]["logs"]
    assert set(logs) == {"default", "log0", "log1"}
    assert logs["default"]["exclude"] == ["http.log.access.log0", "http.log.access.log1"]


def test_several_global_loggers() -> None:
    text = (
        "{\n\tlog {\n\t\tlevel INFO\n\t}\n\tlog admin {\n\t\tinclude admin.api\n"
        "\t\toutput discard\n\t}\n}\n"
    )
    logs = adapt(text)["logging"]["logs"]
    assert logs["default"]["level"] == "INFO"
    assert logs["admin"] == {"include": ["admin.api"], "writer": {"output": "discard"}}
    assert logs["default"]["exclude"] == ["admin.api"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{\n\tlog {\n\t}\n\tlog {\n\t}\n}\n", "duplicate global log option for: default"),
        (
            "a.com {\n\tlog {\n\t\tinclude x\n\t}\n}\n",
            "include is not allowed in the log directive",
        ),
        ("{\n\tlog {\n\t\thostnames a\n\t}\n}\n", "hostnames is not allowed in the log global"),
        ("a.com {\n\tlog {\n\t\tlevel A\n\t\tlevel B\n\t}\n}\n", "'level' subdirective specified"),
        ("a.com {\n\tlog {\n\t\toutput net localhost:9\n\t}\n}\n", "'net' is not supported"),
    ],
)
def test_log_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        adapt(text)


# ---- encoders (format json|console) ---------------------------------------------------------


def test_encoder_options_reach_the_config_and_load() -> None:
    from config.model import load_model

    text = (
        "a.com {\n\tlog {\n\t\tformat console {\n\t\t\ttime_format iso8601\n"
        "\t\t\tlevel_format upper\n\t\t\tduration_format nano\n\t\t}\n\t}\n}\n"
    )
    config = adapt(text)
    encoder = config["logging"]["logs"]["log0"]["encoder"]
    assert encoder == {
        "format": "console",
        "time_format": "iso8601",
        "level_format": "upper",
        "duration_format": "nano",
    }
    load_model(config)


def test_go_time_layout_is_a_caddyfile_error_with_line() -> None:
    text = "a.com {\n\tlog {\n\t\tformat json {\n\t\t\ttime_format 2006-01-02\n\t\t}\n\t}\n}\n"
    with pytest.raises(ConfigError, match=r"'2006-01-02' is not supported.*Caddyfile:4"):
        adapt(text)


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        ({"format": "logfmt"}, r"encoder\.format: unknown module: caddy\.logging\.encoders\.lo"),
        ({"format": "json", "time_format": "Jan 2"}, r"encoder\.time_format: 'Jan 2' is not"),
        ({"format": "json", "levl_format": "upper"}, r'encoder: json: unknown field "levl_format"'),
        ({"format": "json", "level_format": "rainbow"}, r"encoder\.level_format"),
    ],
)
def test_json_encoder_options_pyproxy_cannot_honour_are_errors(
    encoder: dict[str, Any], message: str
) -> None:
    from config.model import load_model

    config = {"logging": {"logs": {"a": {"encoder": encoder}}}}
    with pytest.raises(ConfigError, match=r"logging\.logs\.a\." + message):
        load_model(config)


def test_unknown_log_field_is_an_error() -> None:
    from config.model import load_model

    with pytest.raises(ConfigError, match=r'logging\.logs\.a: json: unknown field "levle"'):
        load_model({"logging": {"logs": {"a": {"levle": "INFO"}}}})


def _entry() -> dict[str, Any]:
    return {
        "level": "info",
        "ts": 1796288837.0366518,
        "logger": "http.log.access.log0",
        "msg": "handled request",
        "request": {"method": "GET"},
        "duration": 0.000018608,
        "status": 200,
    }


def test_console_encoder_is_zaps_tab_separated_layout() -> None:
    from proxy.logs import Encoder

    line = Encoder({"format": "console", "time_format": "unix_seconds_float"}).encode(_entry())
    # Caddy's ConsoleEncoder: coloured capital level unless level_format says otherwise, the
    # fields in zap's spaced JSON (what caddy 2.6.2 writes).
    assert line == (
        "1.7962888370366518e+09\t\x1b[34mINFO\x1b[0m\thttp.log.access.log0\thandled request\t"
        '{"request": {"method": "GET"}, "duration": 1.8608e-05, "status": 200}\n'
    )
    plain = Encoder({"format": "console", "level_format": "lower"}).encode(_entry())
    # The default console time is wall_milli (UTC unless time_local).
    assert plain.startswith("2026/12/03 09:07:17.036\tinfo\t")


def test_json_encoder_options() -> None:
    import json

    from proxy.logs import Encoder

    enc = Encoder(
        {
            "format": "json",
            "time_format": "rfc3339_nano",
            "duration_format": "string",
            "level_format": "upper",
            "message_key": "message",
            "time_key": "time",
        }
    )
    out = json.loads(enc.encode(_entry()))
    assert list(out)[:4] == ["level", "time", "logger", "message"]
    assert out["level"] == "INFO"
    assert out["time"] == "2026-12-03T09:07:17.036652Z"
    assert out["duration"] == "18.608µs"
    assert Encoder({"duration_format": "nano"}).encode(_entry()).count('"duration":18608,') == 1


# ---- pyproxy's own logs -------------------------------------------------------------------------


def _record(name: str, msg: str, level: int = 30) -> Any:
    import logging

    return logging.LogRecord(name, level, __file__, 1, msg, ("x",), None)


def test_own_logs_are_caddy_json_lines_off_a_terminal() -> None:
    import io
    import json

    from proxy.logs import own_log_handler

    stream = io.StringIO()
    handler = own_log_handler(stream)
    handler.handle(_record("pyproxy.admin", "admin endpoint %s"))
    handler.handle(_record("pyproxy", "serving %s", 20))
    first, second = stream.getvalue().splitlines()
    out = json.loads(first)
    assert list(out) == ["level", "ts", "logger", "msg"]
    assert (out["level"], out["logger"], out["msg"]) == ("warn", "admin", "admin endpoint x")
    assert isinstance(out["ts"], float)
    # The supervisor's own logger is Caddy's unnamed default logger: no `logger` key.
    assert "logger" not in json.loads(second)


def test_own_logs_use_the_console_layout_on_a_terminal() -> None:
    import io
    import re

    from proxy.logs import own_log_handler

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    own_log_handler(terminal).handle(_record("acme_client.manager", "obtained %s"))
    line = terminal.getvalue().rstrip("\n")
    ts, level, logger, msg = line.split("\t")
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}", ts)  # wall_milli
    assert (level, logger, msg) == ("\x1b[33mWARN\x1b[0m", "tls.obtain", "obtained x")
