"""`cert_issuer zerossl <api_key>` and `tls { issuer zerossl ... }`: current Caddy's ZeroSSL API
issuer (ZeroSSLIssuer.UnmarshalCaddyfile), not 2.6.2's ACME form."""

from __future__ import annotations

from typing import Any

import pytest

from config.adapt import adapt_caddyfile
from config.errors import ConfigError


def policies(text: str) -> list[dict[str, Any]]:
    config, _ = adapt_caddyfile(text, "Caddyfile")
    result: list[dict[str, Any]] = config["apps"]["tls"]["automation"]["policies"]
    return result


def test_global_cert_issuer_with_its_block() -> None:
    text = (
        "{\n\tcert_issuer zerossl KEY123 {\n\t\talt_http_port 8080\n\t\tvalidity_days 90\n\t}\n}\n"
        "a.example.com {\n\trespond hi\n}\n"
    )
    (policy,) = policies(text)
    # Caddy's JSON has the fields in its struct's order.
    assert list(policy["issuers"][0].items()) == [
        ("module", "zerossl"),
        ("api_key", "KEY123"),
        ("validity_days", 90),
        ("alternate_http_port", 8080),
    ]


def test_issuer_inside_tls_keeps_a_runtime_placeholder() -> None:
    # `{env.X}` is evaluated when the issuer is provisioned (proxy.certs), as in Caddy.
    text = "a.example.com {\n\ttls {\n\t\tissuer zerossl {env.ZEROSSL_API_KEY}\n\t}\n}\n"
    (policy,) = policies(text)
    assert policy == {
        "subjects": ["a.example.com"],
        "issuers": [{"module": "zerossl", "api_key": "{env.ZEROSSL_API_KEY}"}],
    }


def test_zerossl_then_acme_fallback() -> None:
    text = "{\n\tcert_issuer zerossl K\n\tcert_issuer acme\n}\na.example.com {\n\trespond hi\n}\n"
    (policy,) = policies(text)
    assert policy["issuers"] == [{"module": "zerossl", "api_key": "K"}, {"module": "acme"}]


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (
            "cert_issuer zerossl",
            2,
            "wrong argument count or unexpected line ending after 'zerossl'",
        ),
        ("cert_issuer zerossl a b", 2, "wrong argument count or unexpected line ending after 'b'"),
        # 2.6.2's zerossl block took ACME properties; current Caddy's does not.
        (
            "cert_issuer zerossl K {\n\t\temail me@example.com\n\t}",
            3,
            "unrecognized zerossl issuer property: email",
        ),
        (
            "cert_issuer zerossl K {\n\t\tvalidity_days many\n\t}",
            3,
            "invalid number of days many: invalid syntax",
        ),
        (
            "cert_issuer zerossl K {\n\t\tvalidity_days 90\n\t\tvalidity_days 365\n\t}",
            4,
            "validity days is already specified: 90",
        ),
        (
            "cert_issuer zerossl K {\n\t\talt_http_port\n\t}",
            3,
            "wrong argument count or unexpected line ending after 'alt_http_port'",
        ),
        (
            "cert_issuer zerossl K {\n\t\tdns cloudflare TOKEN\n\t}",
            3,
            "zerossl issuer property 'dns' (CNAME validation) is not supported by pyproxy",
        ),
    ],
)
def test_errors_name_the_line(body: str, line: int, message: str) -> None:
    text = "{\n\t" + body + "\n}\na.example.com {\n\trespond hi\n}\n"
    with pytest.raises(ConfigError) as err:
        adapt_caddyfile(text, "Caddyfile")
    assert str(err.value) == (
        f"parsing caddyfile tokens for 'cert_issuer': {message}, at Caddyfile:{line}"
    )


def test_tls_issuer_errors_name_the_line() -> None:
    text = "a.example.com {\n\ttls {\n\t\tissuer zerossl\n\t}\n}\n"
    with pytest.raises(ConfigError, match=r"after 'zerossl', at Caddyfile:3$"):
        adapt_caddyfile(text, "Caddyfile")
