"""proxy.tls settings that need no socket: `apps.tls.session_tickets`, ticket key derivation,
group lists, and proxy.libssl's checks (handshakes are in tests/integration/test_tls_sni.py)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from proxy import libssl
from proxy.tls import (
    DEFAULT_TICKET_KEY_ROTATION_S,
    ConnectionPolicy,
    SessionTickets,
    TicketKeys,
    TicketSecret,
    TLSConfigError,
    check_tls_config,
    default_groups,
    groups_problem,
    set_groups,
)


def test_session_tickets_defaults_and_fields() -> None:
    assert SessionTickets.from_json(None) == SessionTickets()
    assert SessionTickets().rotation_interval_s == DEFAULT_TICKET_KEY_ROTATION_S == 12 * 3600
    parsed = SessionTickets.from_json(
        {
            "rotation_interval": "30m",
            "disable_rotation": True,
            "max_keys": 1,
            "key_source": {"provider": "standard"},
        }
    )
    assert parsed == SessionTickets(enabled=True, rotation_interval_s=1800.0, rotate=False)
    assert not SessionTickets.from_json({"disabled": True}).enabled
    # Caddy: a zero interval means the default; integers are nanoseconds.
    assert SessionTickets.from_json({"rotation_interval": 0}).rotation_interval_s == 12 * 3600
    assert SessionTickets.from_json({"rotation_interval": 2 * 10**9}).rotation_interval_s == 2.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"max_keys": 4}, r"\.max_keys: pyproxy keeps one session ticket key"),
        ({"key_source": {"provider": "distributed"}}, r"\.key_source: only the standard"),
        ({"rotation_interval": "soon"}, r"\.rotation_interval: invalid duration"),
        ({"rotation_interval": "-1h"}, r"\.rotation_interval: must not be negative"),
        ({"disabled": "yes"}, r"\.disabled: expected true or false"),
        ({"rotate_every": "1h"}, r"\.rotate_every: unknown field"),
        ([], r": expected an object"),
    ],
)
def test_session_tickets_it_cannot_honour_are_config_errors(value: Any, message: str) -> None:
    with pytest.raises(TLSConfigError, match=r"^apps\.tls\.session_tickets" + message):
        SessionTickets.from_json(value)
    # ... and `validate` sees them before anything binds.
    with pytest.raises(TLSConfigError, match=message):
        check_tls_config({"apps": {"tls": {"session_tickets": value}}})


def test_ticket_keys_are_a_function_of_secret_interval_and_epoch() -> None:
    secret = TicketSecret(bytes(range(32)), 100.0)
    keys = TicketKeys(SessionTickets(rotation_interval_s=60.0), secret)
    twin = TicketKeys(SessionTickets(rotation_interval_s=60.0), secret)
    assert keys.key(3, 80) == twin.key(3, 80)  # what every worker computes on its own
    assert len(keys.key(3, 80)) == 80 and keys.key(3, 48) == keys.key(3, 80)[:48]
    assert keys.key(3, 80) != keys.key(4, 80)
    assert keys.key(3, 80) != TicketKeys(SessionTickets(rotation_interval_s=61.0), secret).key(
        3, 80
    )
    assert keys.key(3, 80) != TicketKeys(keys.settings, TicketSecret(b"x" * 32, 100.0)).key(3, 80)
    assert keys.epoch(now=100.0) == 0 and keys.epoch(now=100.0 + 59.9) == 0
    assert keys.epoch(now=100.0 + 60.0) == 1
    assert keys.seconds_until_rotation(now=130.0) == pytest.approx(30.0)


def test_group_lists() -> None:
    assert ConnectionPolicy().groups == default_groups()
    assert default_groups()[-2:] == ("X25519", "prime256v1")  # caddytls defaultCurves
    assert ("X25519MLKEM768" in default_groups()) == (groups_problem(("X25519MLKEM768",)) is None)
    assert groups_problem(("X25519", "secp521r1")) is None
    problem = groups_problem(("X25519", "bogus"))
    assert problem is not None and problem.startswith("curves x25519, bogus cannot be applied")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    set_groups(ctx, ("X25519",))  # Python 3.11.2's set_ecdh_curve raised UNKNOWN_GROUP here


# ---- proxy.libssl ----------------------------------------------------------------------------


def bridge() -> libssl.LibSSL:
    lib = libssl.bridge()
    assert lib is not None, libssl.unavailable_reason()
    return lib


def test_bridge_reads_the_contexts_own_settings() -> None:
    lib = bridge()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_TICKET
    assert lib.options(ctx) == int(ctx.options)
    keys = bytes(range(80))
    assert lib.ticket_key_length(ctx) == 80
    lib.set_ticket_keys(ctx, keys)
    assert lib.ticket_keys(ctx) == keys
    lib.set_session_cache_mode(ctx, libssl.SSL_SESS_CACHE_OFF)
    assert lib.session_cache_mode(ctx) == libssl.SSL_SESS_CACHE_OFF


def test_bridge_refuses_other_objects() -> None:
    lib = bridge()
    with pytest.raises(TypeError, match=r"expected an ssl\.SSLContext"):
        lib.ctx_pointer(object())  # type: ignore[arg-type]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    conn = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert lib.ssl_pointer(conn)
    conn._sslobj = None  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"no _ssl\._SSLSocket"):
        lib.ssl_pointer(conn)


def test_a_refused_setting_leaves_no_openssl_error_behind() -> None:
    """OpenSSL's error queue is per thread; an error left there would be reported by the ssl
    module's next failing call as if it were its own."""
    lib = bridge()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(libssl.LibSSLError, match=r"groups 'bogus'"):
        lib.set_groups(ctx, "bogus")
    with pytest.raises(libssl.LibSSLError, match="session ticket keys"):
        lib.set_ticket_keys(ctx, b"short")
    assert lib._err_get() == 0
    # The ssl module's own error reporting is unaffected.
    with pytest.raises(ssl.SSLError, match="No cipher can be selected"):
        ctx.set_ciphers("NOTACIPHER")


@pytest.fixture
def without_bridge(monkeypatch: pytest.MonkeyPatch) -> Any:
    """As on an interpreter where proxy.libssl cannot reach libssl (not CPython, or a layout
    the probe does not recognise)."""
    monkeypatch.setattr(libssl, "_bridge", None)
    monkeypatch.setattr(libssl, "_unavailable", "test: no bridge")
    monkeypatch.delattr(ssl.SSLContext, "set_groups", raising=False)
    groups_problem.cache_clear()
    default_groups.cache_clear()
    yield
    groups_problem.cache_clear()
    default_groups.cache_clear()


def test_without_the_bridge_nothing_is_applied_silently_otherwise(without_bridge: Any) -> None:
    # One EC curve still goes through set_ecdh_curve; the rest is a clear config error.
    assert ConnectionPolicy.from_json({"curves": ["secp384r1"]}).curves == ("secp384r1",)
    for curves in (["x25519"], ["secp384r1", "secp256r1"]):
        with pytest.raises(TLSConfigError, match=r"^p\.curves: .*cannot set them \(test: no"):
            ConnectionPolicy.from_json({"curves": curves}, "p")
    assert default_groups() == ()  # OpenSSL's defaults, with a warning
    # Different ciphers on one listener need the per-connection call.
    policies = [
        {"match": {"sni": ["a.test"]}, "cipher_suites": ["TLS_RSA_WITH_AES_128_GCM_SHA256"]},
        {},
    ]
    config = {"apps": {"http": {"servers": {"s": {"tls_connection_policies": policies}}}}}
    with pytest.raises(TLSConfigError, match=r"policies\[1\]\.cipher_suites: differ from .*\[0\]"):
        check_tls_config(config)
    # Tickets still work, with OpenSSL's own key per context (a warning says so).
    keys = TicketKeys(SessionTickets(), TicketSecret(b"k" * 32, 0.0))
    assert not keys.install(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
