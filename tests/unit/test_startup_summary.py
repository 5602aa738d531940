"""The pure parts of the startup feedback (pyproxy issue #15): the worker count from
`--workers`/`PYPROXY_WORKERS`, the sibling workers' log filter, the local root's trust line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from config.errors import ConfigError
from proxy.supervisor import ROOT_UNTRUSTED, _root_trust_line, worker_count
from proxy.worker import SiblingQuiet


def test_worker_count_flag_then_env_then_cores() -> None:
    assert worker_count(3, {"PYPROXY_WORKERS": "5"}, cores=2) == 3
    assert worker_count(0, {"PYPROXY_WORKERS": " 5 "}, cores=2) == 5
    assert worker_count(0, {"PYPROXY_WORKERS": ""}, cores=2) == 2
    assert worker_count(0, {}, cores=7) == 7


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "2.0", "0x2"])
def test_worker_count_refuses_a_bad_env_value(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^PYPROXY_WORKERS: want a positive whole number"):
        worker_count(0, {"PYPROXY_WORKERS": bad}, cores=2)


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "m", None, None)


def test_sibling_quiet_drops_node_news_below_error_only() -> None:
    quiet = SiblingQuiet()
    assert not quiet.filter(record("pyproxy.certs", logging.INFO))
    assert not quiet.filter(record("acme_client.manager", logging.INFO))  # the lock wait
    assert not quiet.filter(record("acme_client", logging.WARNING))
    assert quiet.filter(record("acme_client.manager", logging.ERROR))
    assert quiet.filter(record("pyproxy.worker", logging.INFO))
    assert quiet.filter(record("acme_clientele", logging.INFO))  # not a child logger


def test_root_trust_line(tmp_path: Path) -> None:
    assert _root_trust_line(False, tmp_path) is None
    line = _root_trust_line(True, tmp_path)
    assert line is not None and line.startswith(ROOT_UNTRUSTED)
    (tmp_path / "pyproxy-local-root.crt").write_text("x")
    assert _root_trust_line(True, tmp_path) == (
        "local CA root certificate is installed in the system trust store"
    )
