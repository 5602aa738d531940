"""The typed model: Caddy JSON config (a dict) → frozen dataclasses the runtime is built from.

This module owns validation of the JSON shape the runtime relies on. Every error is a
`ConfigError` whose text starts with the JSON path of the offending value, e.g.
`apps.http.servers.srv0.routes[0].handle[0].upstreams[1].dial: port 99999 is out of range`.

Handlers and matchers the runtime compiles itself (matcher sets, header operations) are kept
as validated dicts; handlers whose fields the engine reads on the hot path are typed.
Pure: no asyncio, socket or ssl imports.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.errors import ConfigError
from config.go_values import PRIVATE_RANGES, DurationError, json_duration_seconds

# Caddy's server defaults (modules/caddyhttp/app.go, server.go): idle 5 min, read_header 1 min,
# no read/write timeout, 16 KiB of request head (Go's http.DefaultMaxHeaderBytes is 1 MiB,
# but Caddy's reference behaviour we match is 16 KiB; see caddy-reference.md).
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_READ_HEADER_TIMEOUT_S = 60.0
DEFAULT_MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes, Caddy's default
DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443

# reverse_proxy transport defaults (httptransport.go): dial 3 s, keepalive idle 2 min,
# 32 idle connections per host, a TCP keep-alive probe every 30 s.
DEFAULT_DIAL_TIMEOUT_S = 3.0
DEFAULT_KEEPALIVE_IDLE_S = 120.0
DEFAULT_KEEPALIVE_PROBE_INTERVAL_S = 30.0
DEFAULT_MAX_IDLE_CONNS_PER_HOST = 32

KNOWN_HANDLERS = frozenset(
    {
        "reverse_proxy",
        "static_response",
        "headers",
        "encode",
        "rewrite",
        "subroute",
        "error",
        "vars",
        "file_server",
        "templates",
        "authentication",
        "request_body",
        "map",
        "copy_response",
        "copy_response_headers",
        "acme_server",
        "push",
        "tracing",
        "metrics",
        "invoke",
        "intercept",
        "log_append",
        "log_filter",
    }
)

# Handlers the engine implements; the others are accepted by the model (Caddy knows them) but
# the runtime refuses to start with them so that nothing is silently skipped.
SUPPORTED_HANDLERS = frozenset(
    {
        "reverse_proxy",
        "static_response",
        "headers",
        "encode",
        "rewrite",
        "subroute",
        "error",
        "vars",
    }
)

# Caddy matchers pyproxy does not implement (no file server: `file` needs one).
UNSUPPORTED_MATCHERS = frozenset({"file"})

KNOWN_MATCHERS = frozenset(
    {
        "host",
        "path",
        "path_regexp",
        "header",
        "header_regexp",
        "method",
        "query",
        "not",
        "remote_ip",
        "client_ip",
        "protocol",
        "expression",
        "file",
        "vars",
        "vars_regexp",
        "tls",
    }
)

# Caddy's http.reverse_proxy.selection_policies modules (proxy.upstream.selection implements them).
SELECTION_POLICIES = (
    "random",
    "random_choose",
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "first",
    "ip_hash",
    "client_ip_hash",
    "uri_hash",
    "query",
    "header",
    "cookie",
)


def parse_duration(value: object, where: str) -> float:
    """A JSON `caddy.Duration` in seconds, or a ConfigError naming its JSON path `where`.

    An integer of nanoseconds, or a Go duration string plus `d` for days
    (config.go_values.json_duration_seconds).
    """
    try:
        return json_duration_seconds(value)
    except DurationError as exc:
        if isinstance(value, str):
            raise ConfigError(f"{where}: invalid duration {value!r}: {exc}") from None
        raise ConfigError(
            f"{where}: expected a duration (a string like '1m30s' or integer nanoseconds), "
            f"got {_kind(value)}"
        ) from None


# ---- small typed readers -------------------------------------------------------------------


def _obj(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object, got {_kind(value)}")
    return value


def _fields(value: object, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    """An object whose keys must all be in `allowed`: the strict loader's one rule.

    Caddy decodes every module with `DisallowUnknownFields` (caddy.StrictUnmarshalJSON), so a
    misspelt key (`"lisen"`) is an error worded `json: unknown field "lisen"`, never ignored.
    """
    obj = _obj(value, where)
    for key in obj:
        if key not in allowed:
            raise ConfigError(f'{where}: json: unknown field "{key}"')
    return obj


def _strict(
    value: object, where: str, allowed: frozenset[str], unsupported: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """`_fields` plus the fields Caddy's JSON has that pyproxy does not implement.

    Those are refused by name ("not supported by pyproxy") rather than accepted and ignored: a
    config the runtime cannot honour is an error. `@id` is allowed everywhere, as Caddy strips
    it (caddy.RemoveMetaFields) before decoding.
    """
    obj = _obj(value, where)
    for key in obj:
        if key in unsupported:
            raise ConfigError(f"{where}.{key}: field {key!r} is not supported by pyproxy")
    return _fields(obj, where, allowed | _META_FIELDS)


_META_FIELDS = frozenset({"@id"})

# Allowed (honoured) and known-but-unsupported fields of each Caddy JSON object the http app
# loader reads, named after Caddy's Go struct tags (modules/caddyhttp/...). `_strict` enforces them.
F = frozenset
CONFIG_FIELDS = F({"admin", "logging", "storage", "apps"})
HTTP_APP_FIELDS = F(
    {"http_port", "https_port", "grace_period", "shutdown_delay", "servers", "metrics"}
)
HTTP_APP_UNSUPPORTED: frozenset[str] = F()
# The `metrics` object (the `metrics` global option) turns on caddy_http_* metrics
# (proxy.worker.http_metrics_enabled); per-host labels are not implemented.
METRICS_UNSUPPORTED = F({"per_host"})
SERVER_FIELDS = F(
    {
        "listen",
        "read_timeout",
        "read_header_timeout",
        "write_timeout",
        "idle_timeout",
        "keepalive_interval",
        "max_header_bytes",
        "routes",
        "errors",
        "tls_connection_policies",
        "automatic_https",
        "trusted_proxies",
        "client_ip_headers",
        "trusted_proxies_strict",
        "logs",
        "protocols",
    }
)
SERVER_UNSUPPORTED = F(
    {
        "listener_wrappers",
        "enable_full_duplex",
        "named_routes",
        "strict_sni_host",
        "listen_protocols",
        "metrics",
        "experimental_http3",
        "allow_0rtt",
        "keepalive_idle",
        "keepalive_count",
    }
)
SERVER_ERRORS_FIELDS = F({"routes"})
SERVER_LOGS_FIELDS = F({"default_logger_name", "logger_names", "skip_hosts", "skip_unmapped_hosts"})
SERVER_LOGS_UNSUPPORTED = F({"should_log_credentials", "trace"})
AUTOMATIC_HTTPS_FIELDS = F(
    {
        "disable",
        "disable_redirects",
        "disable_certificates",
        "skip",
        "skip_certificates",
        "ignore_loaded_certificates",
    }
)
AUTOMATIC_HTTPS_UNSUPPORTED = F({"prefer_wildcard"})
IP_SOURCE_STATIC_FIELDS = F({"source", "ranges"})
ROUTE_FIELDS = F({"group", "match", "handle", "terminal"})
SUBROUTE_FIELDS = F({"handler", "routes", "errors"})
STATIC_RESPONSE_FIELDS = F({"handler", "status_code", "headers", "body", "close", "abort"})
ERROR_FIELDS = F({"handler", "error", "status_code"})
REWRITE_FIELDS = F(
    {
        "handler",
        "method",
        "uri",
        "strip_path_prefix",
        "strip_path_suffix",
        "uri_substring",
        "path_regexp",
    }
)
REWRITE_UNSUPPORTED = F({"query"})
URI_SUBSTRING_FIELDS = F({"find", "replace", "limit"})
PATH_REGEXP_FIELDS = F({"find", "replace"})
HEADERS_FIELDS = F({"handler", "request", "response"})
HEADER_OPS_FIELDS = F({"add", "set", "delete", "replace"})
RESPONSE_HEADER_OPS_FIELDS = HEADER_OPS_FIELDS | F({"require", "deferred"})
ENCODE_FIELDS = F({"handler", "encodings", "prefer", "minimum_length", "match"})
# The encoder modules (encode/gzip, encode/zstd): proxy.handlers.encode reads their `level`.
ENCODER_FIELDS: dict[str, frozenset[str]] = {
    "gzip": F({"level"}),
    # zstd `checksum` (current Caddy; `disable_checksum` in the Caddyfile): only `false` is
    # honoured, as proxy.handlers.encode writes frames without checksums.
    "zstd": F({"level", "checksum"}),
}
# reverse_proxy handle_response entries (caddyhttp.ResponseHandler) and their matcher
# (caddyhttp.ResponseMatcher). The runtime refuses handle_response by name; the entries are
# still decoded strictly, as Caddy does before anything else.
RESPONSE_HANDLER_FIELDS = F({"match", "status_code", "routes"})
RESPONSE_MATCHER_FIELDS = F({"status_code", "headers"})
# A server's tls_connection_policies entries (caddytls.ConnectionPolicy); proxy.tls reads the
# rest. insecure_secrets_log (a TLS key log) and handshake_context are not implemented.
TLS_CONNECTION_POLICY_FIELDS = F(
    {
        "match",
        "certificate_selection",
        "cipher_suites",
        "curves",
        "alpn",
        "protocol_min",
        "protocol_max",
        "drop",
        "client_authentication",
        "default_sni",
        "fallback_sni",
    }
)
TLS_CONNECTION_POLICY_UNSUPPORTED = F({"insecure_secrets_log", "handshake_context"})
REVERSE_PROXY_FIELDS = F(
    {
        "handler",
        "transport",
        "load_balancing",
        "health_checks",
        "upstreams",
        # dynamic_upstreams and handle_response are loaded; the runtime refuses them by name.
        "dynamic_upstreams",
        "handle_response",
        "flush_interval",
        "trusted_proxies",
        "headers",
        "request_buffers",
        "response_buffers",
        "stream_timeout",
        "stream_close_delay",
        "rewrite",
    }
)
REVERSE_PROXY_UNSUPPORTED = F({"circuit_breaker", "max_buffer_size", "verbose_logs"})
# reverse_proxy's `rewrite` is a rewrite handler; pyproxy applies its method and uri.
PROXY_REWRITE_FIELDS = F({"method", "uri"})
PROXY_REWRITE_UNSUPPORTED = REWRITE_FIELDS - PROXY_REWRITE_FIELDS - F({"handler"})
PROXY_HEADERS_FIELDS = F({"request", "response"})
UPSTREAM_FIELDS = F({"dial", "max_requests"})
UPSTREAM_UNSUPPORTED = F({"lookup_srv"})
LOAD_BALANCING_FIELDS = F(
    {"selection_policy", "retries", "try_duration", "try_interval", "retry_match"}
)
# Each selection policy's own fields, besides `policy` (modules/caddyhttp/reverseproxy/
# selectionpolicies.go).
SELECTION_POLICY_FIELDS: dict[str, frozenset[str]] = {
    "random_choose": F({"choose"}),
    "weighted_round_robin": F({"weights"}),
    "query": F({"key", "fallback"}),
    "header": F({"field", "fallback"}),
    "cookie": F({"name", "secret", "max_age", "fallback"}),
}
HEALTH_CHECKS_FIELDS = F({"active", "passive"})
ACTIVE_HEALTH_FIELDS = F(
    {
        "path",
        "uri",
        "upstream",
        "port",
        "headers",
        "method",
        "body",
        "follow_redirects",
        "interval",
        "timeout",
        "passes",
        "fails",
        "max_size",
        "expect_status",
        "expect_body",
    }
)
PASSIVE_HEALTH_FIELDS = F(
    {
        "fail_duration",
        "max_fails",
        "unhealthy_request_count",
        "unhealthy_status",
        "unhealthy_latency",
    }
)
HTTP_TRANSPORT_FIELDS = F(
    {
        "protocol",
        "tls",
        "keep_alive",
        "compression",
        "max_conns_per_host",
        "dial_timeout",
        "response_header_timeout",
        "read_timeout",
        "write_timeout",
        "versions",
    }
)
HTTP_TRANSPORT_UNSUPPORTED = F(
    {
        "resolver",
        "proxy_protocol",
        "forward_proxy_url",
        "network_proxy",
        "dial_fallback_delay",
        "expect_continue_timeout",
        "max_response_header_size",
        "write_buffer_size",
        "read_buffer_size",
        "local_address",
    }
)
KEEP_ALIVE_FIELDS = F(
    {"enabled", "probe_interval", "max_idle_conns", "max_idle_conns_per_host", "idle_timeout"}
)
TRANSPORT_TLS_FIELDS = F(
    {
        "root_ca_pool",
        "root_ca_pem_files",
        "client_certificate_file",
        "client_certificate_key_file",
        "insecure_skip_verify",
        "handshake_timeout",
        "server_name",
        "curves",
    }
)
TRANSPORT_TLS_UNSUPPORTED = F(
    {"client_certificate_automate", "renegotiation", "except_ports", "ca"}
)
del F


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected an array, got {_kind(value)}")
    return value


def _str(value: object, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {_kind(value)}")
    return value


def _strs(value: object, where: str) -> tuple[str, ...]:
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _int(value: object, where: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {_kind(value)}")
    return value


def _bool(value: object, where: str, default: bool = False) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {_kind(value)}")
    return value


def _dur(value: object, where: str, default: float | None = None) -> float | None:
    if value is None:
        return default
    return parse_duration(value, where)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


# ---- network addresses ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkAddress:
    """A Caddy network address: `[network/]host:port[-port]`; `unix/` paths have no port."""

    network: str  # "tcp", "tcp4", "tcp6", "udp", "unix", …
    host: str  # "" means every interface; IPv6 without brackets
    port_start: int
    port_end: int

    @property
    def is_unix(self) -> bool:
        return self.network.startswith("unix")

    def ports(self) -> range:
        return range(self.port_start, self.port_end + 1)


def _port(text: str, where: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{where}: invalid port {text!r}")
    port = int(text)
    if port > 65535:
        raise ConfigError(f"{where}: port {port} is out of range")
    return port


def parse_network_address(text: str, where: str, default_port: int | None = None) -> NetworkAddress:
    """Parse like caddy.ParseNetworkAddress; a missing port uses `default_port` when given."""
    network = "tcp"
    rest = text
    slash = text.find("/")
    if slash > 0 and "[" not in text[:slash] and ":" not in text[:slash]:
        network, rest = text[:slash].lower(), text[slash + 1 :]
    if network.startswith("unix"):
        return NetworkAddress(network, rest, 0, 0)
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ConfigError(f"{where}: missing ']' in address {text!r}")
        host, after = rest[1:close], rest[close + 1 :]
        if after and not after.startswith(":"):
            raise ConfigError(f"{where}: invalid address {text!r}")
        port_text = after[1:]
    else:
        if rest.count(":") > 1:
            raise ConfigError(f"{where}: too many colons in address {text!r}")
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not port_text:
        if default_port is None:
            raise ConfigError(f"{where}: missing port in address {text!r}")
        return NetworkAddress(network, host, default_port, default_port)
    start_text, dash, end_text = port_text.partition("-")
    start = _port(start_text, where)
    end = _port(end_text, where) if dash else start
    if end < start:
        raise ConfigError(f"{where}: end port must not be less than start port")
    return NetworkAddress(network, host, start, end)


# ---- routes and handlers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    match: tuple[dict[str, Any], ...]  # matcher sets, OR-ed; compiled by proxy.matchers
    handle: tuple[Handler, ...]
    group: str = ""
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Handler:
    """Any handler; `raw` is its validated JSON object. Typed subclasses below add fields."""

    name: str
    raw: Mapping[str, Any]
    where: str


@dataclass(frozen=True, slots=True)
class SubrouteHandler(Handler):
    routes: tuple[Route, ...] = ()
    errors: tuple[Route, ...] = ()


@dataclass(frozen=True, slots=True)
class StaticResponseHandler(Handler):
    status_code: str = ""  # may hold a placeholder; "" → 200
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    body: str = ""
    close: bool = False
    abort: bool = False


@dataclass(frozen=True, slots=True)
class ErrorHandler(Handler):
    error: str = ""
    status_code: str = ""  # "" → 500


@dataclass(frozen=True, slots=True)
class RewriteHandler(Handler):
    method: str = ""
    uri: str = ""
    strip_path_prefix: str = ""
    strip_path_suffix: str = ""
    uri_substring: tuple[tuple[str, str, int], ...] = ()
    path_regexp: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HeadersHandler(Handler):
    request: Mapping[str, Any] | None = None  # header ops: set/add/delete/replace
    response: Mapping[str, Any] | None = None  # + deferred, require


@dataclass(frozen=True, slots=True)
class EncodeHandler(Handler):
    encodings: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()
    minimum_length: int = 512  # Caddy's default minimum_length
    match: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DialAddress:
    """One socket to dial: a `dial` parsed like caddy.ParseNetworkAddress, exactly one port.

    `host` is the socket path for unix networks (port 0). Parsed once here; the runtime's
    Upstream, the active health checker and dynamic upstreams (after placeholders are replaced)
    all use `parse_dial_address`.
    """

    network: str
    host: str
    port: int

    @property
    def is_unix(self) -> bool:
        return self.network.startswith("unix")

    @property
    def hostport(self) -> str:
        """`host:port` (IPv6 in brackets), Go's net.JoinHostPort."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    dial: str
    max_requests: int = 0
    # The parsed dial; None when it holds a placeholder (resolved per request).
    address: DialAddress | None = None

    @property
    def host(self) -> str:
        return self.address.host if self.address is not None else ""

    @property
    def port(self) -> int:
        return self.address.port if self.address is not None else 0


@dataclass(frozen=True, slots=True)
class TransportTLS:
    insecure_skip_verify: bool = False
    server_name: str = ""
    root_ca_pem_files: tuple[str, ...] = ()
    root_ca_pool: tuple[str, ...] = ()  # base64 DER certificates
    client_certificate_file: str = ""
    client_certificate_key_file: str = ""
    handshake_timeout_s: float | None = None  # None: no limit of its own (Caddy's default)
    curves: tuple[str, ...] = ()  # Caddy's names (x25519, secp256r1, ...); () = defaults


@dataclass(frozen=True, slots=True)
class HTTPTransport:
    tls: TransportTLS | None = None
    dial_timeout_s: float = DEFAULT_DIAL_TIMEOUT_S
    response_header_timeout_s: float | None = None
    # Caddy's read_timeout / write_timeout: per-read and per-write deadlines on the upstream
    # connection (0: none), enforced by proxy.http.client.UpstreamConnection.
    read_timeout_s: float = 0.0
    write_timeout_s: float = 0.0
    keepalive_enabled: bool = True
    keepalive_idle_s: float = DEFAULT_KEEPALIVE_IDLE_S
    # keep_alive.probe_interval: TCP keep-alive on upstream connections (proxy.upstream.pool).
    # Current Caddy gives Go's dialer KeepAliveConfig{Enable: interval > 0, Interval: interval}:
    # probes every interval after Go's default idle time; negative turns probes off.
    keepalive_probe_interval_s: float = DEFAULT_KEEPALIVE_PROBE_INTERVAL_S
    max_idle_conns_per_host: int = DEFAULT_MAX_IDLE_CONNS_PER_HOST
    max_idle_conns: int = 0  # across all hosts (Go's MaxIdleConns); 0: no limit
    max_conns_per_host: int = 0
    # No `versions`: pyproxy speaks HTTP/1.1 to upstreams, and the loader refuses a `versions`
    # list that asks for anything else (_check_upstream_versions).
    # Go's transport asks for gzip and decodes it when the client did not (DisableCompression).
    compression: bool = True


# Active health check defaults (reverseproxy/healthchecks.go Provision): every 30 s, 5 s timeout.
DEFAULT_HEALTH_INTERVAL_S = 30.0
DEFAULT_HEALTH_TIMEOUT_S = 5.0
# Caddy's try_interval when try_duration is set and try_interval is not (reverseproxy.go
# Provision), so that a dead local upstream does not spin the CPU.
DEFAULT_TRY_INTERVAL_S = 0.25


@dataclass(frozen=True, slots=True)
class PassiveHealthChecks:
    """`health_checks.passive`. Counts failures only when `fail_duration_s > 0` (Caddy)."""

    fail_duration_s: float = 0.0
    max_fails: int = 1  # 0 or unset is Caddy's 1
    unhealthy_request_count: int = 0
    # Status codes; 1-5 stand for a class (5 = 5xx), as the Caddyfile's `5xx` adapts to.
    unhealthy_status: tuple[int, ...] = ()
    unhealthy_latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ActiveHealthChecks:
    """`health_checks.active`, present only when enabled (Caddy's IsEnabled: uri, path or port)."""

    uri: str = ""  # the request-target; `path` (deprecated in Caddy) is read into it
    upstream: str = ""  # another host:port to probe instead of each upstream
    upstream_address: DialAddress | None = None  # `upstream`, parsed
    port: int = 0
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    method: str = "GET"
    body: str = ""
    follow_redirects: bool = False
    interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S
    passes: int = 1
    fails: int = 1
    max_size: int = 0
    expect_status: int = 0  # 0: any 2xx; 1-5: that class
    expect_body: re.Pattern[bytes] | None = field(default=None, compare=False)

    @property
    def target(self) -> str:
        """Request-target of the probe (path and query); `/` when only a port is set."""
        if not self.uri:
            return "/"
        return self.uri if self.uri.startswith("/") else "/" + self.uri


@dataclass(frozen=True, slots=True)
class HealthChecks:
    active: ActiveHealthChecks | None = None
    passive: PassiveHealthChecks | None = None


@dataclass(frozen=True, slots=True)
class SelectionPolicyConfig:
    """`load_balancing.selection_policy`: the policy's name and the fields it reads."""

    policy: str = "random"
    choose: int = 2  # random_choose (0 or unset is Caddy's 2)
    weights: tuple[int, ...] = ()  # weighted_round_robin
    key: str = ""  # query
    field_name: str = ""  # header: the JSON `field`
    cookie_name: str = "lb"  # cookie: the JSON `name`
    secret: str = ""  # cookie
    max_age_s: float = 0.0  # cookie
    fallback: SelectionPolicyConfig | None = None  # query, header, cookie


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    """`load_balancing`. `try_interval_s` is the effective wait (Caddy's 250 ms default)."""

    selection_policy: SelectionPolicyConfig | None = None  # None: random, and not configured
    retries: int = 0
    try_duration_s: float = 0.0
    try_interval_s: float = 0.0
    retry_match: tuple[dict[str, Any], ...] = ()  # matcher sets, compiled by proxy.matchers


@dataclass(frozen=True, slots=True)
class ReverseProxyHandler(Handler):
    upstreams: tuple[UpstreamConfig, ...] = ()
    dynamic_upstreams: Mapping[str, Any] | None = None
    transport: HTTPTransport = field(default_factory=HTTPTransport)
    load_balancing: LoadBalancing = field(default_factory=LoadBalancing)
    health_checks: HealthChecks = field(default_factory=HealthChecks)
    flush_interval_s: float = 0.0  # <0: flush after every write
    request_buffers: int = 0
    response_buffers: int = 0
    trusted_proxies: tuple[str, ...] = ()
    headers_request: Mapping[str, Any] | None = None
    headers_response: Mapping[str, Any] | None = None
    rewrite: Mapping[str, Any] | None = None
    handle_response: tuple[Mapping[str, Any], ...] = ()
    stream_timeout_s: float = 0.0  # > 0: an upgraded stream is closed this long after it began
    stream_close_delay_s: float = 0.0


# ---- servers and app -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeouts:
    read_s: float | None = None
    read_header_s: float | None = DEFAULT_READ_HEADER_TIMEOUT_S
    write_s: float | None = None
    idle_s: float | None = DEFAULT_IDLE_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class ServerLogs:
    default_logger_name: str = ""
    logger_names: Mapping[str, Any] = field(default_factory=dict)
    skip_hosts: tuple[str, ...] = ()
    skip_unmapped_hosts: bool = False


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    listen: tuple[NetworkAddress, ...]
    routes: tuple[Route, ...] = ()
    errors: tuple[Route, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    automatic_https: Mapping[str, Any] = field(default_factory=dict)
    tls_connection_policies: tuple[Mapping[str, Any], ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # CIDRs (static source)
    client_ip_headers: tuple[str, ...] = ("X-Forwarded-For",)
    trusted_proxies_strict: bool = False
    logs: ServerLogs | None = None
    keepalive_interval_s: float | None = None
    # The server's `protocols` as configured (checked by _check_server_protocols); what is
    # served is `served_protocols(protocols)`: unset is h1 h2 (Caddy: h1 h2 h3, no HTTP/3 here).
    protocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HTTPApp:
    servers: Mapping[str, Server]
    http_port: int = DEFAULT_HTTP_PORT
    https_port: int = DEFAULT_HTTPS_PORT
    grace_period_s: float | None = None
    shutdown_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Config:
    http: HTTPApp | None
    admin: Mapping[str, Any] = field(default_factory=dict)
    logging: Mapping[str, Any] = field(default_factory=dict)
    storage: Mapping[str, Any] = field(default_factory=dict)
    tls: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)


def load_model(config: Mapping[str, Any]) -> Config:
    """Validate a Caddy JSON config and build the typed model."""
    cfg = _obj(dict(config) if not isinstance(config, dict) else config, "config")
    for key in cfg:
        if key not in CONFIG_FIELDS:
            # Caddy's top-level Config struct; the wording is Caddy's, the path is the key.
            raise ConfigError(f'{key}: json: unknown field "{key}"')
    admin = _obj(cfg.get("admin"), "admin")
    if "listen" in admin:
        _str(admin["listen"], "admin.listen")
    logging = _load_logging(cfg.get("logging"))
    storage = _obj(cfg.get("storage"), "storage")
    if storage and "module" not in storage:
        raise ConfigError("storage: missing module name")
    apps = _obj(cfg.get("apps"), "apps")
    for name in apps:
        if name not in ("http", "tls", "pki", "events"):
            raise ConfigError(f"apps.{name}: unknown module: {name}")
    tls = _obj(apps.get("tls"), "apps.tls")
    http = _load_http(apps["http"]) if apps.get("http") is not None else None
    return Config(http=http, admin=admin, logging=logging, storage=storage, tls=tls, raw=cfg)


# Caddy's LogEncoderConfig (modules/logging/encoders.go): the named time formats; a Go layout
# string is not one pyproxy can honour (_load_logging rejects it; proxy/logs.py formats these).
LOG_TIME_FORMATS = frozenset(
    {
        "unix_seconds_float",
        "unix_milli_float",
        "unix_nano",
        "iso8601",
        "rfc3339",
        "rfc3339_nano",
        "wall",
        "wall_milli",
        "wall_nano",
        "common_log",
    }
)
LOG_DURATION_FORMATS = frozenset({"seconds", "nano", "string"})
LOG_LEVEL_FORMATS = frozenset({"lower", "upper", "color"})
_LOG_FIELDS = frozenset({"writer", "encoder", "level", "sampling", "include", "exclude"})
_ENCODER_FIELDS = frozenset(
    {
        "format",
        "message_key",
        "level_key",
        "time_key",
        "name_key",
        "caller_key",
        "stacktrace_key",
        "line_ending",
        "time_format",
        "time_local",
        "duration_format",
        "level_format",
    }
)


# Caddy's FileWriter fields. pyproxy's file writer appends and never rolls (a deviation: Caddy
# rolls at 100 MiB by default), so the only roll setting it honours is `roll: false`.
_FILE_WRITER_FIELDS = frozenset({"output", "filename", "roll"})
_FILE_WRITER_UNSUPPORTED = frozenset(
    {
        "mode",
        "dir_mode",
        "roll_size_mb",
        "roll_gzip",
        "roll_compression",
        "roll_local_time",
        "roll_keep",
        "roll_keep_days",
        "roll_interval",
    }
)


def _load_log_writer(writer: dict[str, Any], output: str, where: str) -> None:
    if output != "file":
        _fields(writer, where, frozenset({"output"}))
        return
    _strict(writer, where, _FILE_WRITER_FIELDS, _FILE_WRITER_UNSUPPORTED)
    if not _str(writer.get("filename"), f"{where}.filename"):
        raise ConfigError(f"{where}.filename: a file writer needs a filename")
    if _bool(writer.get("roll"), f"{where}.roll", False):
        raise ConfigError(f"{where}.roll: log rolling is not supported by pyproxy")


def _load_logging(value: object) -> dict[str, Any]:
    logging = _obj(value, "logging")
    logs = _obj(logging.get("logs"), "logging.logs")
    for name, log in logs.items():
        where = f"logging.logs.{name}"
        log = _fields(log, where, _LOG_FIELDS)
        if "encoder" in log:
            enc_where = f"{where}.encoder"
            encoder = _fields(log["encoder"], enc_where, _ENCODER_FIELDS)
            fmt = _str(encoder.get("format"), f"{enc_where}.format")
            if fmt not in ("json", "console"):
                raise ConfigError(
                    f"{enc_where}.format: unknown module: caddy.logging.encoders.{fmt}"
                    " (pyproxy has json and console)"
                )
            # Go time layouts are not something pyproxy can format: only Caddy's names.
            for key, allowed in (
                ("time_format", LOG_TIME_FORMATS),
                ("duration_format", LOG_DURATION_FORMATS),
                ("level_format", LOG_LEVEL_FORMATS),
            ):
                option = _str(encoder.get(key), f"{enc_where}.{key}")
                if option and option not in allowed:
                    raise ConfigError(
                        f"{enc_where}.{key}: {option!r} is not supported by pyproxy"
                        f" (one of {', '.join(sorted(allowed))})"
                    )
            for key in _ENCODER_FIELDS - {"format", "time_local"}:
                _str(encoder.get(key), f"{enc_where}.{key}")
        if log.get("sampling") is not None:
            # zap's sampler drops entries by rate; pyproxy writes every entry.
            raise ConfigError(f"{where}.sampling: not supported by pyproxy")
        writer = _obj(log.get("writer"), f"{where}.writer")
        if writer:
            output = _str(writer.get("output"), f"{where}.writer.output")
            if output not in ("stdout", "stderr", "discard", "file"):
                raise ConfigError(
                    f"{where}.writer.output: unknown module: caddy.logging.writers.{output}"
                    " (pyproxy has stdout, stderr, discard and file)"
                )
            _load_log_writer(writer, output, f"{where}.writer")
        if "level" in log:
            level = _str(log["level"], f"{where}.level").upper()
            if level not in ("DEBUG", "INFO", "WARN", "WARNING", "ERROR", "PANIC", "FATAL", ""):
                raise ConfigError(f"{where}.level: unrecognized log level {log['level']!r}")
        _strs(log.get("include"), f"{where}.include")
        _strs(log.get("exclude"), f"{where}.exclude")
    return logging


def _load_http(value: object) -> HTTPApp:
    where = "apps.http"
    app = _strict(value, where, HTTP_APP_FIELDS, HTTP_APP_UNSUPPORTED)
    if app.get("metrics") is not None:
        metrics = _strict(app["metrics"], f"{where}.metrics", METRICS_UNSUPPORTED)
        if _bool(metrics.get("per_host"), f"{where}.metrics.per_host"):
            raise ConfigError(
                f"{where}.metrics.per_host: per-host metrics are not supported by pyproxy"
            )
    http_port = _int(app.get("http_port"), f"{where}.http_port", DEFAULT_HTTP_PORT)
    https_port = _int(app.get("https_port"), f"{where}.https_port", DEFAULT_HTTPS_PORT)
    for key, port in (("http_port", http_port), ("https_port", https_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{where}.{key}: port {port} is out of range")
    servers_raw = _obj(app.get("servers"), f"{where}.servers")
    servers = {
        name: _load_server(name, srv, f"{where}.servers.{name}")
        for name, srv in servers_raw.items()
    }
    seen: dict[tuple[str, str, int], str] = {}
    for srv in servers.values():
        for addr in srv.listen:
            for port in addr.ports() if not addr.is_unix else range(1):
                lkey = (addr.network, addr.host, port)
                if lkey in seen and seen[lkey] != srv.name:
                    raise ConfigError(
                        f"{where}.servers.{srv.name}.listen: server {srv.name} listening on "
                        f"the same address as server {seen[lkey]}: {addr.host}:{port}"
                    )
                seen[lkey] = srv.name
    return HTTPApp(
        servers=servers,
        http_port=http_port,
        https_port=https_port,
        grace_period_s=_dur(app.get("grace_period"), f"{where}.grace_period"),
        shutdown_delay_s=_dur(app.get("shutdown_delay"), f"{where}.shutdown_delay", 0.0) or 0.0,
    )


def _load_server(name: str, value: object, where: str) -> Server:
    srv = _strict(value, where, SERVER_FIELDS, SERVER_UNSUPPORTED)
    listen = tuple(
        parse_network_address(_str(a, f"{where}.listen[{i}]"), f"{where}.listen[{i}]")
        for i, a in enumerate(_list(srv.get("listen"), f"{where}.listen"))
    )
    timeouts = Timeouts(
        read_s=_dur(srv.get("read_timeout"), f"{where}.read_timeout"),
        read_header_s=_dur(
            srv.get("read_header_timeout"),
            f"{where}.read_header_timeout",
            DEFAULT_READ_HEADER_TIMEOUT_S,
        ),
        write_s=_dur(srv.get("write_timeout"), f"{where}.write_timeout"),
        idle_s=_dur(srv.get("idle_timeout"), f"{where}.idle_timeout", DEFAULT_IDLE_TIMEOUT_S),
    )
    max_header_bytes = _int(srv.get("max_header_bytes"), f"{where}.max_header_bytes", 0)
    if max_header_bytes < 0:
        raise ConfigError(f"{where}.max_header_bytes: must not be negative")
    errors_obj = _strict(srv.get("errors"), f"{where}.errors", SERVER_ERRORS_FIELDS)
    logs = None
    if srv.get("logs") is not None:
        lg = _strict(srv["logs"], f"{where}.logs", SERVER_LOGS_FIELDS, SERVER_LOGS_UNSUPPORTED)
        logs = ServerLogs(
            default_logger_name=_str(
                lg.get("default_logger_name"), f"{where}.logs.default_logger_name"
            ),
            logger_names=_obj(lg.get("logger_names"), f"{where}.logs.logger_names"),
            skip_hosts=_strs(lg.get("skip_hosts"), f"{where}.logs.skip_hosts"),
            skip_unmapped_hosts=_bool(
                lg.get("skip_unmapped_hosts"), f"{where}.logs.skip_unmapped_hosts"
            ),
        )
    tp: tuple[str, ...] = ()
    if srv.get("trusted_proxies") is not None:
        tp_obj = _strict(
            srv["trusted_proxies"], f"{where}.trusted_proxies", IP_SOURCE_STATIC_FIELDS
        )
        source = _str(tp_obj.get("source"), f"{where}.trusted_proxies.source")
        if source != "static":
            raise ConfigError(
                f"{where}.trusted_proxies.source: unknown module: http.ip_sources.{source}"
            )
        tp = _cidrs(tp_obj.get("ranges"), f"{where}.trusted_proxies.ranges")
    protocols = _strs(srv.get("protocols"), f"{where}.protocols")
    _check_server_protocols(protocols, f"{where}.protocols")
    policies = tuple(
        _strict(
            p,
            f"{where}.tls_connection_policies[{i}]",
            TLS_CONNECTION_POLICY_FIELDS,
            TLS_CONNECTION_POLICY_UNSUPPORTED,
        )
        for i, p in enumerate(
            _list(srv.get("tls_connection_policies"), f"{where}.tls_connection_policies")
        )
    )
    return Server(
        name=name,
        listen=listen,
        routes=_load_routes(srv.get("routes"), f"{where}.routes"),
        errors=_load_routes(errors_obj.get("routes"), f"{where}.errors.routes"),
        timeouts=timeouts,
        max_header_bytes=max_header_bytes or DEFAULT_MAX_HEADER_BYTES,
        automatic_https=_strict(
            srv.get("automatic_https"),
            f"{where}.automatic_https",
            AUTOMATIC_HTTPS_FIELDS,
            AUTOMATIC_HTTPS_UNSUPPORTED,
        ),
        tls_connection_policies=policies,
        trusted_proxies=tp,
        client_ip_headers=_strs(srv.get("client_ip_headers"), f"{where}.client_ip_headers")
        or ("X-Forwarded-For",),
        trusted_proxies_strict=bool(
            _int(srv.get("trusted_proxies_strict"), f"{where}.trusted_proxies_strict")
        ),
        logs=logs,
        keepalive_interval_s=_dur(srv.get("keepalive_interval"), f"{where}.keepalive_interval"),
        protocols=protocols,
    )


def _cidrs(value: object, where: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, text in enumerate(_strs(value, where)):
        if text == "private_ranges":
            out += PRIVATE_RANGES
            continue
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(f"{where}[{i}]: invalid IP address or CIDR range {text!r}")
        out.append(str(net))
    return tuple(out)


def _load_routes(value: object, where: str) -> tuple[Route, ...]:
    return tuple(_load_route(r, f"{where}[{i}]") for i, r in enumerate(_list(value, where)))


def _load_route(value: object, where: str) -> Route:
    route = _strict(value, where, ROUTE_FIELDS)
    match = tuple(
        _load_matcher_set(m, f"{where}.match[{i}]")
        for i, m in enumerate(_list(route.get("match"), f"{where}.match"))
    )
    handle = tuple(
        _load_handler(h, f"{where}.handle[{i}]")
        for i, h in enumerate(_list(route.get("handle"), f"{where}.handle"))
    )
    return Route(
        match=match,
        handle=handle,
        group=_str(route.get("group"), f"{where}.group"),
        terminal=_bool(route.get("terminal"), f"{where}.terminal"),
    )


# The fields of the matcher modules whose argument is an object (modules/caddyhttp/
# matchers.go, ip_matchers.go, fileserver/matcher.go). `header`, `query` and `vars` take
# maps of the user's own names and are not field lists.
IP_MATCHER_FIELDS = frozenset({"ranges"})  # current Caddy: no `forwarded` (2.6.2's, deprecated)
REGEXP_MATCHER_FIELDS = frozenset({"name", "pattern"})
TLS_MATCHER_FIELDS = frozenset({"handshake_complete"})


def _load_regexp(spec: object, where: str) -> None:
    pattern = _str(_fields(spec, where, REGEXP_MATCHER_FIELDS).get("pattern"), f"{where}.pattern")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}.pattern: compiling matcher regexp: {exc}")


def _load_response_handler(value: object, where: str) -> dict[str, Any]:
    entry = _fields(value, where, RESPONSE_HANDLER_FIELDS)
    if entry.get("match") is not None:
        _fields(entry["match"], f"{where}.match", RESPONSE_MATCHER_FIELDS)
    return entry


def _load_matcher_set(value: object, where: str) -> dict[str, Any]:
    mset = _obj(value, where)
    for key, arg in mset.items():
        if key not in KNOWN_MATCHERS:
            raise ConfigError(f"{where}.{key}: unknown module: http.matchers.{key}")
        if key in UNSUPPORTED_MATCHERS:
            # Caddy has it; the runtime (proxy.matchers) does not: refused here, so `validate`
            # says so too instead of "Valid configuration" followed by a failed start.
            raise ConfigError(f"{where}.{key}: matcher '{key}' is not supported by pyproxy")
        if key in ("host", "path", "method", "remote_ip", "client_ip") or key == "protocol":
            if key in ("remote_ip", "client_ip"):
                ranges = _fields(arg, f"{where}.{key}", IP_MATCHER_FIELDS).get("ranges")
                for i, r in enumerate(_strs(ranges, f"{where}.{key}.ranges")):
                    if r == "private_ranges" or "{" in r:
                        continue
                    try:
                        ipaddress.ip_network(r, strict=False)
                    except ValueError:
                        raise ConfigError(f"{where}.{key}.ranges[{i}]: invalid IP address: {r!r}")
            elif key == "protocol":
                _str(arg, f"{where}.{key}")
            else:
                _strs(arg, f"{where}.{key}")
        elif key == "not":
            for i, sub in enumerate(_list(arg, f"{where}.not")):
                _load_matcher_set(sub, f"{where}.not[{i}]")
        elif key == "path_regexp":
            _load_regexp(arg, f"{where}.{key}")
        elif key in ("header_regexp", "vars_regexp"):
            for field_name, spec in _obj(arg, f"{where}.{key}").items():
                _load_regexp(spec, f"{where}.{key}.{field_name}")
        elif key in ("header", "query"):
            for hk, hv in _obj(arg, f"{where}.{key}").items():
                if hv is not None:
                    _strs(hv, f"{where}.{key}.{hk}")
        elif key == "tls":
            _fields(arg, f"{where}.{key}", TLS_MATCHER_FIELDS)
    return mset


_STATUS_RE = re.compile(r"^\d{3}$")


def _status(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _str(value, where)
    if _STATUS_RE.match(text):
        code = int(text)
        if not 100 <= code <= 999:
            raise ConfigError(f"{where}: invalid status code {text}")
    elif "{" not in text:
        raise ConfigError(f"{where}: invalid status code {text!r}")
    return text


def _header_map(value: object, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((k, _strs(v, f"{where}.{k}")) for k, v in _obj(value, where).items())


def _header_ops(
    value: object, where: str, allowed: frozenset[str] = RESPONSE_HEADER_OPS_FIELDS
) -> dict[str, Any] | None:
    if value is None:
        return None
    ops = _strict(value, where, allowed)
    for key, arg in ops.items():
        if key in ("set", "add"):
            _header_map(arg, f"{where}.{key}")
        elif key == "delete":
            _strs(arg, f"{where}.delete")
        elif key == "replace":
            for hk, reps in _obj(arg, f"{where}.replace").items():
                for i, rep in enumerate(_list(reps, f"{where}.replace.{hk}")):
                    rep = _obj(rep, f"{where}.replace.{hk}[{i}]")
                    if "search_regexp" in rep:
                        try:
                            re.compile(_str(rep["search_regexp"], f"{where}.replace.{hk}[{i}]"))
                        except re.error as exc:
                            raise ConfigError(f"{where}.replace.{hk}[{i}].search_regexp: {exc}")
        elif key in ("deferred",):
            _bool(arg, f"{where}.{key}")
        elif key == "require":
            _obj(arg, f"{where}.require")
        else:
            raise ConfigError(f"{where}: unknown field {key!r}")
    return ops


def _load_handler(value: object, where: str) -> Handler:
    h = _obj(value, where)
    name = _str(h.get("handler"), f"{where}.handler")
    if not name:
        raise ConfigError(f"{where}: module name 'handler' not specified")
    if name not in KNOWN_HANDLERS:
        raise ConfigError(f"{where}.handler: unknown module: http.handlers.{name}")
    if name == "subroute":
        _strict(h, where, SUBROUTE_FIELDS)
        errs = _strict(h.get("errors"), f"{where}.errors", SERVER_ERRORS_FIELDS)
        return SubrouteHandler(
            name,
            h,
            where,
            routes=_load_routes(h.get("routes"), f"{where}.routes"),
            errors=_load_routes(errs.get("routes"), f"{where}.errors.routes"),
        )
    if name == "static_response":
        _strict(h, where, STATIC_RESPONSE_FIELDS)
        return StaticResponseHandler(
            name,
            h,
            where,
            status_code=_status(h.get("status_code"), f"{where}.status_code"),
            headers=_header_map(h.get("headers"), f"{where}.headers"),
            body=_str(h.get("body"), f"{where}.body"),
            close=_bool(h.get("close"), f"{where}.close"),
            abort=_bool(h.get("abort"), f"{where}.abort"),
        )
    if name == "error":
        _strict(h, where, ERROR_FIELDS)
        return ErrorHandler(
            name,
            h,
            where,
            error=_str(h.get("error"), f"{where}.error"),
            status_code=_status(h.get("status_code"), f"{where}.status_code"),
        )
    if name == "rewrite":
        _strict(h, where, REWRITE_FIELDS, REWRITE_UNSUPPORTED)
        subs = []
        for i, s in enumerate(_list(h.get("uri_substring"), f"{where}.uri_substring")):
            s = _strict(s, f"{where}.uri_substring[{i}]", URI_SUBSTRING_FIELDS)
            subs.append(
                (
                    _str(s.get("find"), f"{where}.uri_substring[{i}].find"),
                    _str(s.get("replace"), f"{where}.uri_substring[{i}].replace"),
                    _int(s.get("limit"), f"{where}.uri_substring[{i}].limit"),
                )
            )
        regs = []
        for i, s in enumerate(_list(h.get("path_regexp"), f"{where}.path_regexp")):
            s = _strict(s, f"{where}.path_regexp[{i}]", PATH_REGEXP_FIELDS)
            find = _str(s.get("find"), f"{where}.path_regexp[{i}].find")
            try:
                re.compile(find)
            except re.error as exc:
                raise ConfigError(f"{where}.path_regexp[{i}].find: {exc}")
            regs.append((find, _str(s.get("replace"), f"{where}.path_regexp[{i}].replace")))
        return RewriteHandler(
            name,
            h,
            where,
            method=_str(h.get("method"), f"{where}.method"),
            uri=_str(h.get("uri"), f"{where}.uri"),
            strip_path_prefix=_str(h.get("strip_path_prefix"), f"{where}.strip_path_prefix"),
            strip_path_suffix=_str(h.get("strip_path_suffix"), f"{where}.strip_path_suffix"),
            uri_substring=tuple(subs),
            path_regexp=tuple(regs),
        )
    if name == "headers":
        _strict(h, where, HEADERS_FIELDS)
        return HeadersHandler(
            name,
            h,
            where,
            request=_header_ops(h.get("request"), f"{where}.request", HEADER_OPS_FIELDS),
            response=_header_ops(h.get("response"), f"{where}.response"),
        )
    if name == "encode":
        _strict(h, where, ENCODE_FIELDS)
        encs = _obj(h.get("encodings"), f"{where}.encodings")
        for enc, enc_cfg in encs.items():
            if enc not in ENCODER_FIELDS:
                raise ConfigError(f"{where}.encodings.{enc}: unknown module: http.encoders.{enc}")
            enc_obj = _strict(enc_cfg, f"{where}.encodings.{enc}", ENCODER_FIELDS[enc])
            if _bool(enc_obj.get("checksum"), f"{where}.encodings.{enc}.checksum", False):
                raise ConfigError(
                    f"{where}.encodings.{enc}.checksum: zstd frame checksums are not supported "
                    "by pyproxy"
                )
        prefer = _strs(h.get("prefer"), f"{where}.prefer")
        return EncodeHandler(
            name,
            h,
            where,
            encodings=tuple(encs),
            prefer=prefer,
            minimum_length=_int(h.get("minimum_length"), f"{where}.minimum_length", 512),
            match=_obj(h.get("match"), f"{where}.match") or None,
        )
    if name == "reverse_proxy":
        return _load_reverse_proxy(h, where)
    return Handler(name, h, where)


def _load_reverse_proxy(h: dict[str, Any], where: str) -> ReverseProxyHandler:
    _strict(h, where, REVERSE_PROXY_FIELDS, REVERSE_PROXY_UNSUPPORTED)
    upstreams = []
    scheme_tls = False
    transport_obj = _strict(
        h.get("transport"), f"{where}.transport", HTTP_TRANSPORT_FIELDS, HTTP_TRANSPORT_UNSUPPORTED
    )
    if transport_obj:
        proto = _str(transport_obj.get("protocol"), f"{where}.transport.protocol")
        if proto != "http":
            raise ConfigError(
                f"{where}.transport.protocol: unknown module: http.reverse_proxy.transport.{proto}"
            )
        scheme_tls = transport_obj.get("tls") is not None
    for i, u in enumerate(_list(h.get("upstreams"), f"{where}.upstreams")):
        uw = f"{where}.upstreams[{i}]"
        u = _strict(u, uw, UPSTREAM_FIELDS, UPSTREAM_UNSUPPORTED)
        dial = _str(u.get("dial"), f"{uw}.dial")
        if not dial:
            raise ConfigError(f"{uw}.dial: upstream dial address is required")
        address = None
        if "{" not in dial:
            address = parse_dial_address(dial, f"{uw}.dial", 443 if scheme_tls else 80)
        max_requests = _int(u.get("max_requests"), f"{uw}.max_requests")
        if max_requests < 0:
            raise ConfigError(f"{uw}.max_requests: must not be negative")
        upstreams.append(UpstreamConfig(dial=dial, max_requests=max_requests, address=address))
    transport = _load_transport(transport_obj, f"{where}.transport")
    load_balancing = _load_load_balancing(h.get("load_balancing"), f"{where}.load_balancing")
    headers = _strict(h.get("headers"), f"{where}.headers", PROXY_HEADERS_FIELDS)
    health_checks = _load_health_checks(
        h.get("health_checks"), f"{where}.health_checks", 443 if scheme_tls else 80
    )
    flush = h.get("flush_interval")
    flush_s = _dur(flush, f"{where}.flush_interval", 0.0) or 0.0
    if isinstance(flush, int) and flush < 0:
        flush_s = -1.0
    if not upstreams and h.get("dynamic_upstreams") is None:
        pass  # Caddy allows it (every request then fails with 502 "no upstreams available")
    return ReverseProxyHandler(
        "reverse_proxy",
        h,
        where,
        upstreams=tuple(upstreams),
        dynamic_upstreams=_obj(h.get("dynamic_upstreams"), f"{where}.dynamic_upstreams") or None,
        transport=transport,
        load_balancing=load_balancing,
        health_checks=health_checks,
        flush_interval_s=flush_s,
        request_buffers=_int(h.get("request_buffers"), f"{where}.request_buffers"),
        response_buffers=_int(h.get("response_buffers"), f"{where}.response_buffers"),
        trusted_proxies=_cidrs(h.get("trusted_proxies"), f"{where}.trusted_proxies"),
        headers_request=_header_ops(
            headers.get("request"), f"{where}.headers.request", HEADER_OPS_FIELDS
        ),
        headers_response=_header_ops(headers.get("response"), f"{where}.headers.response"),
        rewrite=_strict(
            h.get("rewrite"), f"{where}.rewrite", PROXY_REWRITE_FIELDS, PROXY_REWRITE_UNSUPPORTED
        )
        or None,
        handle_response=tuple(
            _load_response_handler(x, f"{where}.handle_response[{i}]")
            for i, x in enumerate(_list(h.get("handle_response"), f"{where}.handle_response"))
        ),
        stream_timeout_s=_dur(h.get("stream_timeout"), f"{where}.stream_timeout", 0.0) or 0.0,
        stream_close_delay_s=_dur(h.get("stream_close_delay"), f"{where}.stream_close_delay", 0.0)
        or 0.0,
    )


def parse_dial_address(text: str, where: str, default_port: int = 80) -> DialAddress:
    """A `dial` value: caddy.ParseNetworkAddress, and precisely one socket.

    `default_port` stands in for a missing port (443 for an https transport). Caddy itself
    would dial port 0 there and fail on every request; the adapter always writes a port.
    """
    if "://" in text:
        raise ConfigError(
            f"{where}: dial address must not contain a scheme: {text!r} "
            "(use transport tls for https upstreams)"
        )
    addr = parse_network_address(text, where, default_port)
    if addr.port_start != addr.port_end:
        # Caddy's fillDialInfo: "dial address must represent precisely one socket".
        raise ConfigError(f"{where}: upstream dial address must not be a port range")
    if not addr.network.startswith("unix"):
        if addr.port_start == 0:
            raise ConfigError(f"{where}: port 0 cannot be dialled in {text!r}")
        if not addr.network.startswith(("tcp", "udp", "ip")):
            raise ConfigError(f"{where}: network {addr.network!r} cannot be dialled by pyproxy")
    return DialAddress(addr.network, addr.host, addr.port_start)


def _non_negative_duration(value: object, where: str, default: float = 0.0) -> float:
    seconds = _dur(value, where, default)
    assert seconds is not None
    if seconds < 0:
        raise ConfigError(f"{where}: duration must not be negative")
    return seconds


def load_load_balancing(value: object, where: str) -> LoadBalancing:
    """A `load_balancing` object; errors name `where`."""
    return _load_load_balancing(value, where)


def _load_load_balancing(value: object, where: str) -> LoadBalancing:
    lb = _strict(value, where, LOAD_BALANCING_FIELDS)
    policy = None
    if lb.get("selection_policy"):  # an empty object is the default (random), as before
        policy = _load_selection_policy(lb["selection_policy"], f"{where}.selection_policy")
    retries = _int(lb.get("retries"), f"{where}.retries")
    if retries < 0:
        raise ConfigError(f"{where}.retries: must not be negative")
    try_duration_s = _non_negative_duration(lb.get("try_duration"), f"{where}.try_duration")
    try_interval_s = _non_negative_duration(lb.get("try_interval"), f"{where}.try_interval")
    if try_duration_s > 0 and try_interval_s == 0:
        # Caddy's Handler.Provision: 250 ms, but only with try_duration (retries alone: none).
        try_interval_s = DEFAULT_TRY_INTERVAL_S
    retry_match = tuple(
        _load_matcher_set(m, f"{where}.retry_match[{i}]")
        for i, m in enumerate(_list(lb.get("retry_match"), f"{where}.retry_match"))
    )
    return LoadBalancing(
        selection_policy=policy,
        retries=retries,
        try_duration_s=try_duration_s,
        try_interval_s=try_interval_s,
        retry_match=retry_match,
    )


def load_selection_policy(value: object, where: str) -> SelectionPolicyConfig:
    """A `selection_policy` object (`{"policy": "cookie", ...}`); errors name `where`."""
    return _load_selection_policy(value, where)


def _load_selection_policy(value: object, where: str) -> SelectionPolicyConfig:
    obj = _obj(value, where)
    name = _str(obj.get("policy"), f"{where}.policy")
    if name not in SELECTION_POLICIES:
        raise ConfigError(
            f"{where}.policy: unknown module: http.reverse_proxy.selection_policies.{name}"
        )
    _strict(obj, where, SELECTION_POLICY_FIELDS.get(name, frozenset()) | {"policy"})
    fallback = None
    if obj.get("fallback") is not None:
        fallback = _load_selection_policy(obj["fallback"], f"{where}.fallback")
    # Each policy's own checks, as its Provision/Validate in selectionpolicies.go.
    choose = _int(obj.get("choose"), f"{where}.choose") or 2
    if choose < 2:
        raise ConfigError(f"{where}.choose: choose must be at least 2")
    weights = tuple(
        _int(w, f"{where}.weights[{i}]")
        for i, w in enumerate(_list(obj.get("weights"), f"{where}.weights"))
    )
    if name == "weighted_round_robin":
        for i, w in enumerate(weights):
            if w < 0:
                raise ConfigError(f"{where}.weights[{i}]: weight of an upstream cannot be negative")
        if sum(weights) <= 0:
            raise ConfigError(
                f"{where}.weights: weighted_round_robin requires at least one upstream with a "
                "positive weight"
            )
    key = _str(obj.get("key"), f"{where}.key")
    if name == "query" and not key:
        raise ConfigError(f"{where}.key: query key is required")
    field_name = _str(obj.get("field"), f"{where}.field")
    if name == "header" and not field_name:
        raise ConfigError(f"{where}.field: header field is required")
    max_age_s = _non_negative_duration(obj.get("max_age"), f"{where}.max_age")
    return SelectionPolicyConfig(
        policy=name,
        choose=choose,
        weights=weights,
        key=key,
        field_name=field_name,
        cookie_name=_str(obj.get("name"), f"{where}.name") or "lb",
        secret=_str(obj.get("secret"), f"{where}.secret"),
        max_age_s=max_age_s,
        fallback=fallback,
    )


def _load_health_checks(value: object, where: str, default_port: int) -> HealthChecks:
    health = _strict(value, where, HEALTH_CHECKS_FIELDS)
    active = _load_active_health(health.get("active"), f"{where}.active", default_port)
    passive = None
    if health.get("passive") is not None:
        passive = load_passive_health(health["passive"], f"{where}.passive")
    return HealthChecks(active=active, passive=passive)


def load_passive_health(value: object, where: str) -> PassiveHealthChecks:
    """A `health_checks.passive` object; errors name `where`."""
    obj = _strict(value, where, PASSIVE_HEALTH_FIELDS)
    max_fails = _int(obj.get("max_fails"), f"{where}.max_fails")
    if max_fails < 0:
        raise ConfigError(f"{where}.max_fails: must be >= 1")
    request_count = _int(obj.get("unhealthy_request_count"), f"{where}.unhealthy_request_count")
    if request_count < 0:
        raise ConfigError(f"{where}.unhealthy_request_count: must not be negative")
    statuses: list[int] = []
    for i, v in enumerate(_list(obj.get("unhealthy_status"), f"{where}.unhealthy_status")):
        code = _health_status(v, f"{where}.unhealthy_status[{i}]")
        if code not in statuses:
            statuses.append(code)
    return PassiveHealthChecks(
        fail_duration_s=_non_negative_duration(obj.get("fail_duration"), f"{where}.fail_duration"),
        max_fails=max_fails or 1,
        unhealthy_request_count=request_count,
        unhealthy_status=tuple(statuses),
        unhealthy_latency_s=_non_negative_duration(
            obj.get("unhealthy_latency"), f"{where}.unhealthy_latency"
        ),
    )


def _health_status(value: object, where: str) -> int:
    """A status code of a health check: 500, 5 (a class), "500" or "5xx"."""
    code = -1
    if isinstance(value, int) and not isinstance(value, bool):
        code = value
    elif isinstance(value, str):
        text = value.strip().lower()
        # The Caddyfile adapter turns "5xx" into 5; accept both spellings in JSON.
        if len(text) == 3 and text.endswith("xx") and text[0].isdigit():
            code = int(text[0])
        elif text.isdigit():
            code = int(text)
    if not (1 <= code <= 5 or 100 <= code <= 999):
        raise ConfigError(f"{where}: invalid status code {value!r}")
    return code


def load_active_health(
    value: object, where: str, default_port: int = 80
) -> ActiveHealthChecks | None:
    """A `health_checks.active` object; None when it is not enabled (no uri, path or port)."""
    return _load_active_health(value, where, default_port)


def _load_active_health(value: object, where: str, default_port: int) -> ActiveHealthChecks | None:
    obj = _strict(value, where, ACTIVE_HEALTH_FIELDS)
    uri = _str(obj.get("uri"), f"{where}.uri")
    path = _str(obj.get("path"), f"{where}.path")  # deprecated in Caddy, still honoured
    port = _int(obj.get("port"), f"{where}.port")
    if not 0 <= port < 65536:
        raise ConfigError(f"{where}.port: invalid port {port}")
    headers = []
    for name, values in _obj(obj.get("headers"), f"{where}.headers").items():
        hw = f"{where}.headers.{name}"
        vals = (values,) if isinstance(values, str) else _strs(values, hw)
        headers.append((name, vals))
    expect_body = None
    body_pattern = _str(obj.get("expect_body"), f"{where}.expect_body")
    if body_pattern:
        try:
            expect_body = re.compile(body_pattern.encode())
        except re.error as exc:
            raise ConfigError(f"{where}.expect_body: compiling regular expression: {exc}")
    expect_status = 0
    if obj.get("expect_status"):
        expect_status = _health_status(obj["expect_status"], f"{where}.expect_status")
    upstream = _str(obj.get("upstream"), f"{where}.upstream")
    upstream_address = None
    if upstream and "{" not in upstream:
        upstream_address = parse_dial_address(upstream, f"{where}.upstream", default_port)
    interval_s = _non_negative_duration(obj.get("interval"), f"{where}.interval")
    timeout_s = _non_negative_duration(obj.get("timeout"), f"{where}.timeout")
    max_size = _int(obj.get("max_size"), f"{where}.max_size")
    if not (uri or path or port):
        return None  # Caddy's ActiveHealthChecks.IsEnabled
    return ActiveHealthChecks(
        uri=uri or path,
        upstream=upstream,
        upstream_address=upstream_address,
        port=port,
        headers=tuple(headers),
        method=_str(obj.get("method"), f"{where}.method", "GET").upper() or "GET",
        body=_str(obj.get("body"), f"{where}.body"),
        follow_redirects=_bool(obj.get("follow_redirects"), f"{where}.follow_redirects"),
        # Zero is Caddy's default (healthchecks.go Provision).
        interval_s=interval_s or DEFAULT_HEALTH_INTERVAL_S,
        timeout_s=timeout_s or DEFAULT_HEALTH_TIMEOUT_S,
        passes=max(1, _int(obj.get("passes"), f"{where}.passes")),
        fails=max(1, _int(obj.get("fails"), f"{where}.fails")),
        max_size=max(0, max_size),
        expect_status=expect_status,
        expect_body=expect_body,
    )


def _check_upstream_versions(versions: tuple[str, ...], where: str) -> None:
    """The transport's `versions`, of which pyproxy honours HTTP/1.1 only.

    Caddy (reverseproxy/httptransport.go) defaults to ["1.1", "2"]: HTTP/1.1 to plain-HTTP
    upstreams, HTTP/2 offered by ALPN to TLS ones. pyproxy's upstream client speaks HTTP/1.1, so
    unset or a list with "1.1" is accepted (deviation: a TLS upstream that would negotiate h2
    with Caddy gets HTTP/1.1). A list that needs another protocol is refused: "h2c" makes Caddy
    speak HTTP/2 in cleartext *instead of* HTTP/1.1, "3" must stand alone in Caddy, and without
    "1.1" the file asks for HTTP/2 only.
    """
    for i, v in enumerate(versions):
        if v not in ("1.1", "2", "h2c", "3"):
            raise ConfigError(
                f"{where}[{i}]: unsupported HTTP version: {v}, supported version: 1.1, 2, h2c, 3"
            )
    if not versions:
        return
    if "3" in versions:
        raise ConfigError(
            f"{where}: HTTP/3 to upstreams is not supported by pyproxy (it speaks HTTP/1.1 "
            'to upstreams; use ["1.1"])'
        )
    if "h2c" in versions:
        raise ConfigError(
            f"{where}: h2c (HTTP/2 over cleartext) to upstreams is not supported by pyproxy "
            '(it speaks HTTP/1.1 to upstreams; use ["1.1"] or an http:// upstream)'
        )
    if "1.1" not in versions:
        raise ConfigError(
            f"{where}: HTTP/2-only upstream connections are not supported by pyproxy (it "
            'speaks HTTP/1.1 to upstreams; include "1.1")'
        )


# What a server with `protocols` unset serves: Caddy's default ["h1", "h2", "h3"] (current
# Caddy and 2.6.2, caddyhttp.Server.Protocols) without h3, which is not implemented (so no
# Alt-Svc is ever sent). h2c is not in it: Caddy serves h2c only when the list names it.
DEFAULT_SERVER_PROTOCOLS: tuple[str, ...] = ("h1", "h2")


def served_protocols(protocols: tuple[str, ...]) -> tuple[str, ...]:
    """The protocols a server with this (checked) `protocols` list serves."""
    return protocols or DEFAULT_SERVER_PROTOCOLS


def _check_server_protocols(protocols: tuple[str, ...], where: str) -> None:
    """The server's `protocols`: the engine serves HTTP/1.x, HTTP/2 over TLS (ALPN h2) when the
    list names h2, and HTTP/2 over plain HTTP with prior knowledge when it names h2c (issue
    #13).

    Unset is Caddy's default ["h1", "h2", "h3"] and stays accepted: it serves h1 and h2 (TLS
    listeners offer ["h2", "http/1.1"] by ALPN), not h3 (`served_protocols`). An explicit list
    is the file saying which protocols must be served, so one naming h3 is refused rather than
    served as something else, and one without h1 is refused too (an h2-only server, which Caddy
    allows, is not implemented).
    """
    for i, p in enumerate(protocols):
        if p not in ("h1", "h2", "h2c", "h3"):
            raise ConfigError(f"{where}[{i}]: unknown protocol {p!r}")
    if not protocols:
        return
    if "h1" not in protocols:
        raise ConfigError(
            f"{where}: a server without h1 is not supported by pyproxy (it serves HTTP/1.1, "
            "and HTTP/2 beside it; HTTP/3 is not implemented)"
        )
    others = [p for p in protocols if p not in ("h1", "h2", "h2c")]
    if others:
        raise ConfigError(
            f"{where}: {', '.join(others)} not supported by pyproxy: HTTP/3 is not "
            "implemented, it serves HTTP/1.1, HTTP/2 over TLS and h2c; use "
            '["h1", "h2"], ["h1", "h2", "h2c"], ["h1"] or leave protocols unset'
        )


def _load_transport(t: dict[str, Any], where: str) -> HTTPTransport:
    if not t:
        return HTTPTransport()
    tls = None
    if t.get("tls") is not None:
        tw = f"{where}.tls"
        tt = _strict(t["tls"], tw, TRANSPORT_TLS_FIELDS, TRANSPORT_TLS_UNSUPPORTED)
        tls = TransportTLS(
            insecure_skip_verify=_bool(
                tt.get("insecure_skip_verify"), f"{tw}.insecure_skip_verify"
            ),
            server_name=_str(tt.get("server_name"), f"{tw}.server_name"),
            root_ca_pem_files=_strs(tt.get("root_ca_pem_files"), f"{tw}.root_ca_pem_files"),
            root_ca_pool=_strs(tt.get("root_ca_pool"), f"{tw}.root_ca_pool"),
            client_certificate_file=_str(
                tt.get("client_certificate_file"), f"{tw}.client_certificate_file"
            ),
            client_certificate_key_file=_str(
                tt.get("client_certificate_key_file"), f"{tw}.client_certificate_key_file"
            ),
            handshake_timeout_s=_dur(tt.get("handshake_timeout"), f"{tw}.handshake_timeout"),
            curves=_strs(tt.get("curves"), f"{tw}.curves"),
        )
    ka = _strict(t.get("keep_alive"), f"{where}.keep_alive", KEEP_ALIVE_FIELDS)
    _check_upstream_versions(_strs(t.get("versions"), f"{where}.versions"), f"{where}.versions")
    return HTTPTransport(
        tls=tls,
        dial_timeout_s=_dur(t.get("dial_timeout"), f"{where}.dial_timeout", DEFAULT_DIAL_TIMEOUT_S)
        or DEFAULT_DIAL_TIMEOUT_S,
        response_header_timeout_s=_dur(
            t.get("response_header_timeout"), f"{where}.response_header_timeout"
        ),
        read_timeout_s=_dur(t.get("read_timeout"), f"{where}.read_timeout", 0.0) or 0.0,
        write_timeout_s=_dur(t.get("write_timeout"), f"{where}.write_timeout", 0.0) or 0.0,
        keepalive_enabled=_bool(ka.get("enabled"), f"{where}.keep_alive.enabled", True),
        keepalive_idle_s=_dur(
            ka.get("idle_timeout"), f"{where}.keep_alive.idle_timeout", DEFAULT_KEEPALIVE_IDLE_S
        )
        or DEFAULT_KEEPALIVE_IDLE_S,
        # Zero (or unset) is Caddy's default of 30 s (httptransport.go NewTransport).
        keepalive_probe_interval_s=_dur(
            ka.get("probe_interval"), f"{where}.keep_alive.probe_interval"
        )
        or DEFAULT_KEEPALIVE_PROBE_INTERVAL_S,
        max_idle_conns_per_host=_int(
            ka.get("max_idle_conns_per_host"),
            f"{where}.keep_alive.max_idle_conns_per_host",
            DEFAULT_MAX_IDLE_CONNS_PER_HOST,
        ),
        max_idle_conns=_int(ka.get("max_idle_conns"), f"{where}.keep_alive.max_idle_conns"),
        max_conns_per_host=_int(t.get("max_conns_per_host"), f"{where}.max_conns_per_host"),
        compression=_bool(t.get("compression"), f"{where}.compression", True),
    )
