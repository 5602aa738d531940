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
