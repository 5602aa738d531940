"""Which logger name a request's Host selects (Caddy's ServerLogConfig.getLoggerName)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from proxy.logs import mapped_logger_name, site_logger_name

NAMES = {
    "a.test": "exact",
    "b.test:8080": "with-port",
    "*.wild.test": "wild",
    "::1": "v6",
    "many.test": ["first", "second"],
}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.test", "exact"),
        ("a.test:443", "exact"),  # the port is stripped when the exact Host is not mapped
        ("b.test:8080", "with-port"),
        ("b.test", None),
        ("x.wild.test", "wild"),
        ("x.wild.test:8443", "wild"),
        ("[::1]:8443", "v6"),
        ("many.test", "first"),  # current Caddy maps a host to a list; the first names it
        ("other.test", None),
    ],
)
def test_mapped_logger_name(host: str, expected: str | None) -> None:
    assert mapped_logger_name(NAMES, host) == expected


def test_unmapped_hosts_take_the_default_logger_name() -> None:
    logs = SimpleNamespace(logger_names=NAMES, default_logger_name="fallback")
    assert site_logger_name(logs, "other.test") == "fallback"
    assert site_logger_name(logs, "a.test") == "exact"
    bare = SimpleNamespace(logger_names={}, default_logger_name="")
    assert site_logger_name(bare, "a.test") == ""
