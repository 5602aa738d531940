"""The strict JSON loader: unknown fields are Caddy's `json: unknown field`, fields Caddy has but
pyproxy does not implement are refused by name; each error names the JSON path."""

from __future__ import annotations

from typing import Any

import pytest

from config.errors import ConfigError
from config.model import ReverseProxyHandler, load_model

SRV = "apps.http.servers.s"
RP = f"{SRV}.routes[0].handle[0]"


def with_server(**fields: Any) -> dict[str, Any]:
    return {"apps": {"http": {"servers": {"s": {"listen": [":8080"], **fields}}}}}


def with_handler(handler: dict[str, Any]) -> dict[str, Any]:
    return with_server(routes=[{"handle": [handler]}])


MATCH = f"{SRV}.routes[0].match[0]"


def with_match(**matchers: Any) -> dict[str, Any]:
    return with_server(routes=[{"match": [matchers]}])


def with_proxy(**fields: Any) -> dict[str, Any]:
    return with_handler({"handler": "reverse_proxy", "upstreams": [{"dial": "a:1"}], **fields})


CASES: list[tuple[dict[str, Any], str]] = [
    ({"apps": {}, "admn": {}}, 'admn: json: unknown field "admn"'),
    ({"apps": {"htp": {}}}, "apps.htp: unknown module: htp"),
    ({"apps": {"http": {"servrs": {}}}}, 'apps.http: json: unknown field "servrs"'),
    (
        {"apps": {"http": {"metrics": {"per_hots": True}}}},
        'apps.http.metrics: json: unknown field "per_hots"',
    ),
    (
        {"apps": {"http": {"metrics": {"per_host": True}}}},
        "apps.http.metrics.per_host: per-host metrics are not supported by pyproxy",
    ),
    (with_server(lisen=[":1"]), f'{SRV}: json: unknown field "lisen"'),
    (with_server(read_timeot="1s"), f'{SRV}: json: unknown field "read_timeot"'),
    (with_server(errors={"route": []}), f'{SRV}.errors: json: unknown field "route"'),
    (with_server(logs={"skip_host": []}), f'{SRV}.logs: json: unknown field "skip_host"'),
    (
        with_server(automatic_https={"disabled": True}),
        f'{SRV}.automatic_https: json: unknown field "disabled"',
    ),
    (with_server(routes=[{"handel": []}]), f'{SRV}.routes[0]: json: unknown field "handel"'),
    (
        with_handler({"handler": "static_response", "status": 200}),
        f'{RP}: json: unknown field "status"',
    ),
    (with_handler({"handler": "subroute", "route": []}), f'{RP}: json: unknown field "route"'),
    (with_handler({"handler": "error", "message": "x"}), f'{RP}: json: unknown field "message"'),
    (with_handler({"handler": "rewrite", "path": "/"}), f'{RP}: json: unknown field "path"'),
    (
        with_handler({"handler": "headers", "request": {"sett": {}}}),
        f'{RP}.request: json: unknown field "sett"',
    ),
    (
        with_handler({"handler": "encode", "encodings": {}, "level": 5}),
        f'{RP}: json: unknown field "level"',
    ),
    (
        with_handler({"handler": "reverse_proxy", "upstream": [{"dial": "a:1"}]}),
        f'{RP}: json: unknown field "upstream"',
    ),
    (
        with_proxy(upstreams=[{"dail": "a:1"}]),
        f'{RP}.upstreams[0]: json: unknown field "dail"',
    ),
    (
        with_proxy(transport={"protocol": "http", "dial_timout": "1s"}),
        f'{RP}.transport: json: unknown field "dial_timout"',
    ),
    (
        with_proxy(transport={"protocol": "http", "tls": {"insecure": True}}),
        f'{RP}.transport.tls: json: unknown field "insecure"',
    ),
    (
        with_proxy(transport={"protocol": "http", "keep_alive": {"idle": "1s"}}),
        f'{RP}.transport.keep_alive: json: unknown field "idle"',
    ),
    (
        with_proxy(load_balancing={"try_duraton": "1s"}),
        f'{RP}.load_balancing: json: unknown field "try_duraton"',
    ),
    (
        with_proxy(load_balancing={"selection_policy": {"policy": "first", "key": "k"}}),
        f'{RP}.load_balancing.selection_policy: json: unknown field "key"',
    ),
    (
        with_proxy(health_checks={"passive": {"fail_duraton": "1s"}}),
        f'{RP}.health_checks.passive: json: unknown field "fail_duraton"',
    ),
    (
        with_proxy(health_checks={"active": {"intervl": "1s"}}),
        f'{RP}.health_checks.active: json: unknown field "intervl"',
    ),
    (with_proxy(headers={"req": {}}), f'{RP}.headers: json: unknown field "req"'),
    # Caddy has these fields; pyproxy does not implement them, so it says so instead of ignoring.
    (
        with_server(listener_wrappers=[]),
        f"{SRV}.listener_wrappers: field 'listener_wrappers' is not supported by pyproxy",
    ),
    (
        with_proxy(circuit_breaker={}),
        f"{RP}.circuit_breaker: field 'circuit_breaker' is not supported by pyproxy",
    ),
    (
        with_proxy(transport={"protocol": "http", "resolver": {}}),
        f"{RP}.transport.resolver: field 'resolver' is not supported by pyproxy",
    ),
    (
        with_proxy(transport={"protocol": "http", "keep_alive": {"probe_intervall": "1s"}}),
        f'{RP}.transport.keep_alive: json: unknown field "probe_intervall"',
    ),
    (
        with_proxy(rewrite={"strip_path_prefix": "/a"}),
        f"{RP}.rewrite.strip_path_prefix: field 'strip_path_prefix' is not supported by pyproxy",
    ),
    # Matcher modules whose argument is an object (caddyhttp MatchRemoteIP, MatchRegexp, ...).
    (with_match(remote_ip={"rangez": []}), f'{MATCH}.remote_ip: json: unknown field "rangez"'),
    # Current Caddy dropped remote_ip's deprecated `forwarded` (client_ip replaces it).
    (
        with_match(remote_ip={"forwarded": True}),
        f'{MATCH}.remote_ip: json: unknown field "forwarded"',
    ),
    (with_match(client_ip={"range": []}), f'{MATCH}.client_ip: json: unknown field "range"'),
    (
        with_match(path_regexp={"patern": "^/a"}),
        f'{MATCH}.path_regexp: json: unknown field "patern"',
    ),
    (
        with_match(header_regexp={"X-A": {"pattern": "a", "nam": "n"}}),
        f'{MATCH}.header_regexp.X-A: json: unknown field "nam"',
    ),
    (
        with_match(vars_regexp={"{x}": {"regexp": "a"}}),
        f'{MATCH}.vars_regexp.{{x}}: json: unknown field "regexp"',
    ),
    (with_match(tls={"handshake": True}), f'{MATCH}.tls: json: unknown field "handshake"'),
    # Caddy's `file` matcher needs a file server, which pyproxy does not have.
    (
        with_match(file={"try_files": ["{path}"]}),
        f"{MATCH}.file: matcher 'file' is not supported by pyproxy",
    ),
    (
        with_match(**{"not": [{"remote_ip": {"ip": []}}]}),
        f'{MATCH}.not[0].remote_ip: json: unknown field "ip"',
    ),
    # The encode handler's encoder modules.
    (
        with_handler({"handler": "encode", "encodings": {"gzip": {"levle": 5}}}),
        f'{RP}.encodings.gzip: json: unknown field "levle"',
    ),
    (
        with_handler({"handler": "encode", "encodings": {"zstd": {"checksum": True}}}),
        f"{RP}.encodings.zstd.checksum: zstd frame checksums are not supported by pyproxy",
    ),
    # reverse_proxy handle_response entries and their response matcher.
    (
        with_proxy(handle_response=[{"routs": []}]),
        f'{RP}.handle_response[0]: json: unknown field "routs"',
    ),
    (
        with_proxy(handle_response=[{"match": {"status": [500]}}]),
        f'{RP}.handle_response[0].match: json: unknown field "status"',
    ),
    # A server's TLS connection policies (caddytls.ConnectionPolicy).
    (
        with_server(tls_connection_policies=[{"alpns": ["h2"]}]),
        f'{SRV}.tls_connection_policies[0]: json: unknown field "alpns"',
    ),
    (
        with_server(tls_connection_policies=[{}, {"insecure_secrets_log": "/tmp/k"}]),
        f"{SRV}.tls_connection_policies[1].insecure_secrets_log: field 'insecure_secrets_log' is "
        "not supported by pyproxy",
    ),
]


@pytest.mark.parametrize(("config", "message"), CASES, ids=[m.split(":")[0] for _, m in CASES])
def test_unknown_or_unsupported_field_is_a_config_error_naming_its_path(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(config)
    assert str(err.value) == message


def test_fields_being_implemented_elsewhere_and_meta_ids_are_accepted() -> None:
    model = load_model(
        with_proxy(
            **{"@id": "proxy"},
            rewrite={"method": "GET", "uri": "/x"},
            transport={"protocol": "http", "compression": False, "tls": {"curves": ["x25519"]}},
        )
    )
    assert model.http is not None


def test_transport_timeouts_and_max_idle_conns_load() -> None:
    model = load_model(
        with_proxy(
            transport={
                "protocol": "http",
                "read_timeout": "1500ms",
                "write_timeout": 2_000_000_000,
                "keep_alive": {"max_idle_conns": 10},
            }
        )
    )
    assert model.http is not None
    handler = model.http.servers["s"].routes[0].handle[0]
    assert isinstance(handler, ReverseProxyHandler)
    assert (handler.transport.read_timeout_s, handler.transport.write_timeout_s) == (1.5, 2.0)
    assert handler.transport.max_idle_conns == 10


def test_every_field_caddy_has_in_the_newly_strict_objects_loads() -> None:
    """The strict field lists must not refuse what Caddy accepts there."""
    regexp = {"name": "n", "pattern": "^a"}
    matchers = {
        "remote_ip": {"ranges": ["10.0.0.0/8"]},
        "client_ip": {"ranges": ["private_ranges"]},
        "path_regexp": regexp,
        "header_regexp": {"X-A": regexp},
        "vars_regexp": {"{x}": regexp},
        "tls": {"handshake_complete": True},
    }
    policy = {
        "match": {"sni": ["a.example"]},
        "certificate_selection": {"any_tag": ["cert0"]},
        "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
        "curves": ["x25519"],
        "alpn": ["http/1.1"],
        "protocol_min": "tls1.2",
        "protocol_max": "tls1.3",
        "drop": False,
        "client_authentication": {"mode": "request"},
        "default_sni": "a.example",
        "fallback_sni": "a.example",
    }
    handle_response = {"match": {"status_code": [500], "headers": {}}, "status_code": 502}
    encode = {
        "handler": "encode",
        "encodings": {"gzip": {"level": 5}, "zstd": {"level": "best", "checksum": False}},
    }
    model = load_model(
        with_server(
            tls_connection_policies=[policy],
            routes=[
                {
                    "match": [matchers],
                    "handle": [
                        encode,
                        {
                            "handler": "reverse_proxy",
                            "upstreams": [{"dial": "a:1"}],
                            "handle_response": [{**handle_response, "routes": []}],
                        },
                    ],
                }
            ],
        )
    )
    assert model.http is not None
    server = model.http.servers["s"]
    assert server.tls_connection_policies == (policy,)
    assert server.routes[0].match == (matchers,)
