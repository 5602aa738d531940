"""Which ACME challenge the issuer solves (acmez's choice), and the config that enables them.

The order flow itself (publishing, retrying with the other type) runs against Pebble in
tests/integration/test_acme_tls_alpn.py; here are the pure decisions and the config errors.
"""

from __future__ import annotations

import random
import ssl
from pathlib import Path
from typing import Any

import pytest

from acme_client.http01 import HTTP01, TLS_ALPN01
from acme_client.issuer import (
    CHALLENGE_TYPES,
    ChallengeMemory,
    IssuerConfig,
    IssuerConfigError,
    check_issuer_challenges,
    choose_challenge,
    enabled_challenge_types,
    issuer_config_from_caddy,
)
from config.adapt import adapt_caddyfile
from config.errors import ConfigError
from proxy import libssl
from proxy.certs import CertRuntime, acme_issuer_configs, prepare_certificates

PEBBLE_OFFER = ["http-01", "dns-01", "tls-alpn-01", "dns-account-01"]


# ---- choose_challenge ---------------------------------------------------------------------------


def test_first_preferred_type_that_is_offered_enabled_and_not_failed() -> None:
    both = (HTTP01, TLS_ALPN01)
    assert choose_challenge(PEBBLE_OFFER, both, [TLS_ALPN01, HTTP01]) == TLS_ALPN01
    assert choose_challenge(PEBBLE_OFFER, both, [HTTP01, TLS_ALPN01]) == HTTP01
    # Untried types pyproxy cannot solve (dns-01) may lead the preference: skipped.
    assert choose_challenge(PEBBLE_OFFER, both, ["dns-01", TLS_ALPN01, HTTP01]) == TLS_ALPN01
    # Disabled in the config.
    assert choose_challenge(PEBBLE_OFFER, (HTTP01,), [TLS_ALPN01, HTTP01]) == HTTP01
    # Failed before for this identifier (acmez failedChallengeMap): the other one.
    assert choose_challenge(PEBBLE_OFFER, both, [TLS_ALPN01, HTTP01], [TLS_ALPN01]) == HTTP01
    # Not offered by the CA.
    assert choose_challenge(["dns-01", HTTP01], (TLS_ALPN01,), [TLS_ALPN01, HTTP01]) is None
    assert choose_challenge(PEBBLE_OFFER, both, [TLS_ALPN01, HTTP01], [TLS_ALPN01, HTTP01]) is None


# ---- ChallengeMemory ----------------------------------------------------------------------------


def test_first_order_is_random_then_kept() -> None:
    firsts = {
        ChallengeMemory(random.Random(seed)).order([HTTP01, TLS_ALPN01])[0] for seed in range(20)
    }
    # acmez shuffles on the first fill: neither type is favoured before anything is known.
    assert firsts == {HTTP01, TLS_ALPN01}
    memory = ChallengeMemory(random.Random(3))
    first = memory.order([HTTP01, TLS_ALPN01])
    assert memory.order([TLS_ALPN01, HTTP01]) == first  # not shuffled again
    # A type seen later is added at the end.
    assert memory.order(PEBBLE_OFFER)[:2] == first
    assert set(memory.order(PEBBLE_OFFER)) == set(PEBBLE_OFFER)


def test_success_ratio_orders_the_types() -> None:
    memory = ChallengeMemory(random.Random(0))
    memory.order([HTTP01, TLS_ALPN01])
    memory.record(HTTP01, False)  # port 80 blocked
    assert memory.order([HTTP01, TLS_ALPN01]) == (TLS_ALPN01, HTTP01)
    memory.record(TLS_ALPN01, False)
    memory.record(TLS_ALPN01, False)
    memory.record(HTTP01, True)  # http-01 1/2 = 0.5 > tls-alpn-01 0/2
    assert memory.order([HTTP01, TLS_ALPN01]) == (HTTP01, TLS_ALPN01)


# ---- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("challenges", "expected"),
    [
        (None, (HTTP01, TLS_ALPN01)),
        ({}, (HTTP01, TLS_ALPN01)),
        ({"http": {"disabled": True}}, (TLS_ALPN01,)),
        ({"tls-alpn": {"disabled": True}}, (HTTP01,)),
        ({"http": {"disabled": False}, "tls-alpn": {"alternate_port": 8443}}, CHALLENGE_TYPES),
        ({"http": {"disabled": True}, "tls-alpn": {"disabled": True}}, ()),
    ],
)
def test_enabled_types_from_the_issuer_json(challenges: Any, expected: tuple[str, ...]) -> None:
    issuer: dict[str, Any] = {"module": "acme"}
    if challenges is not None:
        issuer["challenges"] = challenges
    assert enabled_challenge_types(issuer) == expected
    if expected:
        config = issuer_config_from_caddy(issuer)
        assert config is not None and config.challenge_types == expected
        assert config.with_ca("https://other/dir").challenge_types == expected


@pytest.mark.parametrize(
    ("challenges", "message"),
    [
        (
            {"http": {"disabled": True}, "tls-alpn": {"disabled": True}},
            r"^iss\.challenges: both the http and the tls-alpn challenge are disabled",
        ),
        ({"dns": {"provider": {"name": "x"}}}, r"^iss\.challenges\.dns: the DNS challenge"),
    ],
)
def test_issuers_left_with_nothing_to_solve_are_config_errors(
    challenges: dict[str, Any], message: str
) -> None:
    with pytest.raises(IssuerConfigError, match=message):
        check_issuer_challenges({"module": "acme", "challenges": challenges}, "iss")


def test_tls_alpn_only_needs_the_bridge() -> None:
    issuer = {"module": "acme", "challenges": {"http": {"disabled": True}}}
    check_issuer_challenges(issuer, "iss", tls_alpn_servable=True)
    with pytest.raises(IssuerConfigError, match=r"^iss\.challenges\.http\.disabled: only the"):
        check_issuer_challenges(issuer, "iss", tls_alpn_servable=False)
    # Both enabled: HTTP-01 still works without the bridge.
    check_issuer_challenges({"module": "acme"}, "iss", tls_alpn_servable=False)


def config_with_issuer(storage: Path, issuer: dict[str, Any]) -> dict[str, Any]:
    route = {"match": [{"host": ["a.example.com"]}], "handle": [{"handler": "static_response"}]}
    return {
        "storage": {"module": "file_system", "root": str(storage)},
        "apps": {
            "http": {"servers": {"srv0": {"listen": [":8443"], "routes": [route]}}},
            "tls": {"automation": {"policies": [{"issuers": [{"module": "internal"}, issuer]}]}},
        },
    }


def test_loading_the_config_names_the_issuers_path(tmp_path: Path) -> None:
    issuer = {
        "module": "acme",
        "challenges": {"http": {"disabled": True}, "tls-alpn": {"disabled": True}},
    }
    with pytest.raises(
        ConfigError, match=r"^apps\.tls\.automation\.policies\[0\]\.issuers\[1\]\.challenges: both"
    ):
        prepare_certificates(config_with_issuer(tmp_path, issuer))


@pytest.fixture
def without_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libssl, "_bridge", None)
    monkeypatch.setattr(libssl, "_unavailable", "test: no bridge")
    monkeypatch.delattr(ssl.SSLContext, "set_groups", raising=False)


def test_without_the_bridge_issuers_use_http01_only(tmp_path: Path, without_bridge: None) -> None:
    setup = prepare_certificates(config_with_issuer(tmp_path, {"module": "acme"}))
    runtime = CertRuntime(setup)
    managed = [m for m in setup.plan.managed if m.name == "a.example.com"]
    assert managed
    (config,) = acme_issuer_configs(managed[0], runtime.tls_app)
    assert isinstance(config, IssuerConfig)
    assert config.challenge_types == (HTTP01,)
    only_alpn = {"module": "acme", "challenges": {"http": {"disabled": True}}}
    with pytest.raises(ConfigError, match=r"issuers\[1\]\.challenges\.http\.disabled: only"):
        prepare_certificates(config_with_issuer(tmp_path, only_alpn))


def test_caddyfile_disabling_both_challenges_fails_at_load(tmp_path: Path) -> None:
    caddyfile = (
        "{\n"
        f"\tstorage file_system {tmp_path}\n"
        "}\n"
        "a.example.com {\n"
        "\ttls {\n"
        "\t\tissuer acme {\n"
        "\t\t\tdisable_http_challenge\n"
        "\t\t\tdisable_tlsalpn_challenge\n"
        "\t\t}\n"
        "\t}\n"
        '\trespond "hi"\n'
        "}\n"
    )
    config, _warnings = adapt_caddyfile(caddyfile, "Caddyfile")
    issuers = config["apps"]["tls"]["automation"]["policies"][0]["issuers"]
    assert issuers[0]["challenges"] == {"http": {"disabled": True}, "tls-alpn": {"disabled": True}}
    with pytest.raises(ConfigError, match=r"^apps\.tls\.automation\.policies\[0\]\.issuers\[0\]"):
        prepare_certificates(config)
