"""Every field of the http model is either read by the runtime or refused by name.

A model field nothing reads is a config key that is accepted and then silently ignored — the
very bug the strict loader exists to prevent. The check is textual: some file under proxy/ (or
config/auto_https.py, which applies automatic_https) must access `.field` on something.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from config import model

ROOT = Path(__file__).resolve().parents[2]
# The command line is not the runtime: its `args.versions` must not count as reading a field.
RUNTIME_FILES = [
    *sorted(p for p in (ROOT / "proxy").rglob("*.py") if p.name not in {"cli.py", "app.py"}),
    ROOT / "config" / "auto_https.py",
]

AUDITED = [
    model.Route,
    model.Handler,
    model.SubrouteHandler,
    model.StaticResponseHandler,
    model.ErrorHandler,
    model.RewriteHandler,
    model.HeadersHandler,
    model.EncodeHandler,
    model.UpstreamConfig,
    model.TransportTLS,
    model.HTTPTransport,
    model.ReverseProxyHandler,
    model.Timeouts,
    model.ServerLogs,
    model.Server,
    model.HTTPApp,
]

# Fields loaded into the model although the runtime does not implement them: it refuses a config
# that sets them, by name (a ConfigError), so they are never silently ignored. Each entry says
# where the refusal is.
REFUSED_AS_UNSUPPORTED: dict[str, str] = {
    # proxy/handlers/reverse_proxy.py: "dynamic_upstreams: not supported by pyproxy yet"
    "ReverseProxyHandler.dynamic_upstreams": "refused in ReverseProxy.__init__",
    # proxy/handlers/reverse_proxy.py: "handle_response: not supported by pyproxy yet"
    "ReverseProxyHandler.handle_response": "refused in ReverseProxy.__init__",
}

# Fields honoured through another path than attribute access on the model.
READ_ELSEWHERE: dict[str, str] = {
    # config/auto_https.py plans automatic HTTPS from the raw JSON (apps.http and each server).
    "Server.automatic_https": "config/auto_https.py reads the raw automatic_https object",
    "HTTPApp.http_port": "config/auto_https.py _port_option(http_app, 'http_port')",
    "HTTPApp.https_port": "config/auto_https.py _port_option(http_app, 'https_port')",
    # proxy/http/runtime.py reads it with getattr over any handler type.
    "ReverseProxyHandler.stream_close_delay_s": "proxy/http/runtime.py getattr",
}

# KNOWN GAPS found by this audit (2026-12-03): loaded and accepted, but no runtime code reads
# them, so a config setting them is silently not honoured. Each must become either implemented
# or refused by name (a "not supported by pyproxy" ConfigError); until then they are listed so
# that any *new* unread field fails this test. Do not add to this list. It is empty now: the
# server's keepalive_interval is applied, transport versions and server protocols are checked by
# the loader (only HTTP/1.1 passes), tls.handshake_timeout bounds the upstream handshake,
# stream_timeout closes upgraded streams, the transport's read_timeout and write_timeout are
# deadlines on the upstream connection, and keep_alive.max_idle_conns caps the idle connections
# of all of a transport's pools (proxy.upstream.pool.IdleLimit).
KNOWN_UNHONOURED: frozenset[str] = frozenset()


def _runtime_text() -> str:
    return "\n".join(p.read_text() for p in RUNTIME_FILES)


def test_every_model_field_is_read_by_the_runtime_or_refused() -> None:
    text = _runtime_text()
    unread = []
    for cls in AUDITED:
        for f in dataclasses.fields(cls):
            qualified = f"{cls.__name__}.{f.name}"
            if (
                qualified in REFUSED_AS_UNSUPPORTED
                or qualified in READ_ELSEWHERE
                or qualified in KNOWN_UNHONOURED
            ):
                continue
            if not re.search(rf"\.{re.escape(f.name)}\b", text):
                unread.append(qualified)
    assert unread == [], f"model fields no runtime code reads: {unread}"


def test_the_exception_lists_name_real_fields_and_gaps_stay_gaps() -> None:
    names = {f"{c.__name__}.{f.name}" for c in AUDITED for f in dataclasses.fields(c)}
    assert set(REFUSED_AS_UNSUPPORTED) | set(READ_ELSEWHERE) | KNOWN_UNHONOURED <= names
    # A gap that got implemented must leave the list (so the list only shrinks).
    text = _runtime_text()
    fixed = [q for q in KNOWN_UNHONOURED if re.search(rf"\.{q.split('.')[1]}\b", text)]
    assert fixed == [], f"now read by the runtime; remove from KNOWN_UNHONOURED: {fixed}"


def test_a_field_nobody_reads_is_caught() -> None:
    """The audit's own check: a made-up field name is found unread."""
    assert not re.search(r"\.no_such_model_field_x\b", _runtime_text())
