"""Protocol choices pyproxy cannot honour are config errors naming the JSON path.

pyproxy serves HTTP/1.1 to clients, HTTP/2 over TLS when a server's `protocols` list h2, h2c
(prior knowledge) on plain listeners when they list h2c, and speaks HTTP/1.1 to upstreams.
Caddy's defaults (server `protocols` unset = h1 h2 h3; transport `versions` unset = 1.1 2) stay
accepted, documented as deviations; an explicit request for HTTP/3 (or h2c to upstreams) is
refused rather than served as something else.
"""

from __future__ import annotations

from typing import Any

import pytest

from config.adapt import adapt_caddyfile
from config.errors import ConfigError
from config.model import load_model, served_protocols

SRV = "apps.http.servers.s"
TRANSPORT = f"{SRV}.routes[0].handle[0].transport"


def with_server(**fields: Any) -> dict[str, Any]:
    return {"apps": {"http": {"servers": {"s": {"listen": [":8080"], **fields}}}}}


def with_versions(versions: list[str] | None) -> dict[str, Any]:
    transport: dict[str, Any] = {"protocol": "http"}
    if versions is not None:
        transport["versions"] = versions
    handler = {"handler": "reverse_proxy", "upstreams": [{"dial": "a:1"}], "transport": transport}
    return with_server(routes=[{"handle": [handler]}])


@pytest.mark.parametrize("versions", [None, ["1.1"], ["1.1", "2"], ["2", "1.1"]])
def test_upstream_versions_with_http11_are_accepted(versions: list[str] | None) -> None:
    assert load_model(with_versions(versions)).http is not None


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        (["3"], f"{TRANSPORT}.versions: HTTP/3 to upstreams is not supported by pyproxy"),
        (["1.1", "3"], f"{TRANSPORT}.versions: HTTP/3 to upstreams is not supported by pyproxy"),
        (["h2c", "2"], f"{TRANSPORT}.versions: h2c (HTTP/2 over cleartext) to upstreams"),
        (["1.1", "h2c"], f"{TRANSPORT}.versions: h2c (HTTP/2 over cleartext) to upstreams"),
        (["2"], f"{TRANSPORT}.versions: HTTP/2-only upstream connections are not supported"),
        (["1.0"], f"{TRANSPORT}.versions[0]: unsupported HTTP version: 1.0"),
    ],
)
def test_upstream_versions_needing_another_protocol_are_refused(
    versions: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(with_versions(versions))
    assert str(err.value).startswith(message)


def test_h2c_upstream_from_the_caddyfile_is_refused_by_path() -> None:
    config, _ = adapt_caddyfile(":8080 {\n\treverse_proxy h2c://127.0.0.1:9000\n}\n", "Caddyfile")
    with pytest.raises(ConfigError) as err:
        load_model(config)
    assert ".transport.versions: h2c (HTTP/2 over cleartext) to upstreams" in str(err.value)


@pytest.mark.parametrize(
    "protocols", [None, ["h1"], ["h1", "h2"], ["h2", "h1"], ["h1", "h2c"], ["h1", "h2", "h2c"]]
)
def test_server_protocols_unset_h1_or_h1_h2_are_accepted(protocols: list[str] | None) -> None:
    fields = {} if protocols is None else {"protocols": protocols}
    model = load_model(with_server(**fields))
    assert model.http is not None
    assert model.http.servers["s"].protocols == tuple(protocols or ())


@pytest.mark.parametrize(
    ("protocols", "message"),
    [
        (["h1", "h2", "h3"], f"{SRV}.protocols: h3 not supported by pyproxy: HTTP/3 is not"),
        (["h1", "h2c", "h3"], f"{SRV}.protocols: h3 not supported by pyproxy"),
        (["h2c"], f"{SRV}.protocols: a server without h1 is not supported by pyproxy"),
        (["h2"], f"{SRV}.protocols: a server without h1 is not supported by pyproxy"),
        (["h3"], f"{SRV}.protocols: a server without h1 is not supported by pyproxy"),
        (["spdy"], f"{SRV}.protocols[0]: unknown protocol 'spdy'"),
    ],
)
def test_server_protocols_asking_for_http3_or_no_h1_are_refused(
    protocols: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(with_server(protocols=protocols))
    assert str(err.value).startswith(message)
    if "unknown" not in message:
        assert "HTTP/3 is not implemented" in str(err.value)


def test_servers_protocols_global_option_with_h2_is_accepted() -> None:
    config, _ = adapt_caddyfile(
        "{\n\tservers {\n\t\tprotocols h1 h2\n\t}\n}\n:8080 {\n\trespond hi\n}\n", "Caddyfile"
    )
    model = load_model(config)
    assert model.http is not None
    assert [s.protocols for s in model.http.servers.values()] == [("h1", "h2")]


def test_servers_protocols_global_option_with_h3_is_refused_by_path() -> None:
    config, _ = adapt_caddyfile(
        "{\n\tservers {\n\t\tprotocols h1 h2 h3\n\t}\n}\n:8080 {\n\trespond hi\n}\n",
        "Caddyfile",
    )
    with pytest.raises(ConfigError) as err:
        load_model(config)
    assert ".protocols: h3 not supported by pyproxy" in str(err.value)


@pytest.mark.parametrize(
    ("protocols", "served"),
    [
        (None, ("h1", "h2")),  # Caddy's default h1 h2 h3, without h3 (not implemented)
        (["h1"], ("h1",)),
        (["h1", "h2c"], ("h1", "h2c")),  # h2c only when listed, as in Caddy
        (["h1", "h2", "h2c"], ("h1", "h2", "h2c")),
    ],
)
def test_served_protocols_default_to_h1_h2(
    protocols: list[str] | None, served: tuple[str, ...]
) -> None:
    fields = {} if protocols is None else {"protocols": protocols}
    model = load_model(with_server(**fields))
    assert model.http is not None
    assert served_protocols(model.http.servers["s"].protocols) == served
