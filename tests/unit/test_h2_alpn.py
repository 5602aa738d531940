"""Which ALPN protocols a server's TLS listener offers (RFC 7301), from its `protocols`.

Caddy fills a connection policy's empty `alpn` from the server's protocols (h2 -> "h2",
h1 -> "http/1.1") and keeps an explicit list. Unset `protocols` serve h1 and h2 (Caddy's
default h1 h2 h3 without h3), so h2 is offered unless an explicit list leaves it out; never a
protocol pyproxy cannot serve.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.tls import CertificateStore, selector_for_server


def offered(server: dict[str, Any]) -> list[tuple[str, ...]]:
    selector = selector_for_server(CertificateStore(), server, "s")
    assert selector is not None
    return [p.alpn for p in selector.policies]


@pytest.mark.parametrize(
    ("protocols", "alpn"),
    [
        (None, ("h2", "http/1.1")),
        (["h1"], ("http/1.1",)),
        (["h1", "h2c"], ("http/1.1",)),  # h2c is plain HTTP only
        (["h1", "h2"], ("h2", "http/1.1")),
    ],
)
def test_default_policy_alpn_follows_the_protocols(
    protocols: list[str] | None, alpn: tuple[str, ...]
) -> None:
    server: dict[str, Any] = {"tls_connection_policies": [{}]}
    if protocols is not None:
        server["protocols"] = protocols
    assert offered(server) == [alpn]
    assert offered({**server, "tls_connection_policies": []}) == [alpn]


def test_explicit_policy_alpn_is_kept_within_what_is_served() -> None:
    policies = [{"match": {"sni": ["a.test"]}, "alpn": ["http/1.1"]}, {"alpn": ["h2", "h3"]}]
    with_h2 = {"protocols": ["h1", "h2"], "tls_connection_policies": policies}
    assert offered(with_h2) == [("http/1.1",), ("h2",)]  # h3 is never offered
    unset = {"tls_connection_policies": policies}
    assert offered(unset) == [("http/1.1",), ("h2",)]  # unset serves h2 too
    without = {"protocols": ["h1"], "tls_connection_policies": policies}
    assert offered(without) == [("http/1.1",), ()]  # no h2 when the list leaves it out
