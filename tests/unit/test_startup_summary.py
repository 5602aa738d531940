"""The pure parts of the startup feedback (pyproxy issue #15): the worker count from
`--workers`/`PYPROXY_WORKERS`, the sibling workers' log filter, the local root's trust line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from acme_client.manager import NODE_STATE
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


def test_sibling_quiet_drops_only_marked_node_state_below_error() -> None:
    """A sibling worker stays quiet about the node's shared state, but still says what it did
    itself: it may be the worker that won the lock and obtained the certificate."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    handler.addFilter(SiblingQuiet())
    logger = logging.getLogger("acme_client.manager.test_sibling_quiet")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("a: certificate in service", extra=NODE_STATE)
        logger.info("lock: waiting for another instance holding the lock", extra=NODE_STATE)
        logger.warning("automatic HTTPS: x", extra=NODE_STATE)
        logger.info("a: certificate obtained successfully from ca")
        logger.warning("a: will retry")
        logger.error("a: storage unreadable", extra=NODE_STATE)
    finally:
        logger.removeHandler(handler)
    assert seen == [
        "a: certificate obtained successfully from ca",
        "a: will retry",
        "a: storage unreadable",
    ]


def test_root_trust_line(tmp_path: Path) -> None:
    assert _root_trust_line(False, tmp_path) is None
    line = _root_trust_line(True, tmp_path)
    assert line is not None and line.startswith(ROOT_UNTRUSTED)
    # The name `pyproxy trust --install` (and `caddy trust`) writes, and the older pyproxy one.
    for name in ("Truststore_Development_CA_12345.crt", "pyproxy-local-root.crt"):
        (tmp_path / name).write_text("x")
        assert _root_trust_line(True, tmp_path) == (
            "local CA root certificate is installed in the system trust store"
        )
        (tmp_path / name).unlink()
