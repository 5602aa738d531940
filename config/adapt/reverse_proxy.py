"""The `reverse_proxy` directive: Caddyfile → the `reverse_proxy` handler JSON.

Follows Caddy's `reverseproxy/caddyfile.go` (+ the JSON shapes of its selection
policies, health checks and HTTP transport). This module owns:

- upstream addresses: `host:port`, `host` (port 80), `http://`, `https://` (TLS, 443),
  `h2c://`, `:port`, port ranges `host:8000-8003`, placeholders, `unix//path`;
  ports are validated (Caddy 2.6.2 accepted `www:99999`; current Caddy and we do not);
- every subdirective of the handler, the `lb_policy` modules, `transport http { ... }`
  (and `transport fastcgi`), and the `dynamic a|srv|multi` upstream sources;
- durations and sizes come from config.go_values (`caddy.ParseDuration`, go-humanize's
  `ParseBytes`), shared with every other directive and the model.

It also registers `copy_response` and `copy_response_headers` (used inside
`handle_response`, whose routes the core's `parse_segment_as_subroute` parses).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.adapt.headers import HeaderOpError, caddyfile_header_op
from config.adapt.helper import Helper, register_handler_directive
from config.adapt.matchers import (
    GoNumError,
    go_atoi,
    go_quote,
    parse_named_response_matcher,
    parse_nested_matcher_set,
    parse_status_codes,
)
from config.caddyfile.dispenser import Dispenser
from config.errors import ConfigError
from config.go_values import PRIVATE_RANGES, DurationError, parse_bytes, parse_duration

JSONDict = dict[str, Any]

# -- upstream addresses -------------------------------------------------------------------------


class UpstreamError(ValueError):
    """An upstream address that cannot be used (message worded like Caddy's)."""


_PATH_IN_UPSTREAM = (
    "for now, URLs for proxy upstreams only support scheme, host, and port components"
)

# Go's net.Dial networks plus Caddy's own (`unix+h2c`, `fd`, `fdgram`). Anything else
# before a "/" is most likely a path (`host:8080/api`), which Caddy would turn into a
# nonsense dial address; we reject it like a path in a URL.
_KNOWN_NETWORKS = frozenset(
    (
        *("tcp", "tcp4", "tcp6", "udp", "udp4", "udp6", "ip", "ip4", "ip6"),
        *("unix", "unixgram", "unixpacket", "unix+h2c", "fd", "fdgram"),
    )
)


def _is_unix(network: str) -> bool:
    return network.startswith("unix")


def _is_fd(network: str) -> bool:
    return network.startswith("fd")


def join_host_port(host: str, port: str) -> str:
    """Go's `net.JoinHostPort`: brackets around hosts that contain a colon."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def join_network_address(network: str, host: str, port: str) -> str:
    """Caddy's `JoinNetworkAddress`: `[network/]host[:port]`."""
    prefix = network + "/" if network else ""
    if (host and not port) or _is_unix(network) or _is_fd(network):
        return prefix + host
    if port:
        return prefix + join_host_port(host, port)
    return prefix


def _split_host_port(addr: str) -> tuple[str, str]:
    """Go's `net.SplitHostPort` (raises ValueError like it errors)."""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ValueError("missing ']' in address")
        rest = addr[end + 1 :]
        if not rest:
            raise ValueError("missing port in address")
        if not rest.startswith(":"):
            raise ValueError("missing port in address")
        port = rest[1:]
        if ":" in port:
            raise ValueError("too many colons in address")
        host = addr[1:end]
        if "[" in host or "]" in host:
            raise ValueError("unexpected '[' in address")
        return host, port
    colon = addr.rfind(":")
    if colon < 0:
        raise ValueError("missing port in address")
    host, port = addr[:colon], addr[colon + 1 :]
    if ":" in host:
        raise ValueError("too many colons in address")
    if "[" in host or "]" in host or "]" in port:
        raise ValueError("unexpected '[' in address")
    return host, port


def split_network_address(addr: str) -> tuple[str, str, str, bool]:
    """Caddy's `SplitNetworkAddress`: (network, host, port, ok)."""
    network = ""
    before, slash, after = addr.partition("/")
    if slash:
        network = before.strip().lower()
        addr = after
        if _is_unix(network) or _is_fd(network):
            return network, addr, "", True
    try:
        host, port = _split_host_port(addr)
        return network, host, port, True
    except ValueError:
        pass
    try:
        host, _ = _split_host_port(join_host_port(addr.strip("[]"), "0"))
        return network, host, "", True
    except ValueError:
        return network, addr, "", False


def _parse_port(text: str, which: str) -> int:
    # strconv.ParseUint(text, 10, 16), worded as current Caddy's ParseNetworkAddress, which
    # its reverse_proxy Caddyfile parser calls on each upstream (caddyfile.go, since 2.7): so
    # `reverse_proxy www:99999` fails to adapt with `parsing upstream 'www:99999': invalid
    # start port: strconv.ParseUint: parsing "99999": value out of range, at Caddyfile:N`.
    # Deviation from 2.6.2, which adapts and validates it and fails only when dialling.
    if not text or not text.isascii() or not text.isdigit():
        raise UpstreamError(
            f"invalid {which} port: strconv.ParseUint: parsing {go_quote(text)}: invalid syntax"
        )
    value = int(text)
    if value > 65535:
        raise UpstreamError(
            f"invalid {which} port: strconv.ParseUint: parsing {go_quote(text)}: value out of range"
        )
    return value


def parse_port_range(port: str) -> tuple[int, int]:
    """A port or `start-end` range, validated like Caddy's `ParseNetworkAddress`."""
    start_text, dash, end_text = port.partition("-")
    if not dash:
        end_text = start_text
    start = _parse_port(start_text, "start")
    end = _parse_port(end_text, "end")
    if end < start:
        raise UpstreamError("end port must not be less than start port")
    return start, end


@dataclass
class ParsedUpstream:
    network: str
    scheme: str
    host: str
    port: str

    def dial_address(self) -> str:
        if self.network:
            return join_network_address(self.network, self.host, self.port)
        # A placeholder host may carry its own port ("{upstream}").
        if not self.port and "{" in self.host:
            return self.host
        return join_host_port(self.host, self.port)

    def ranged_port(self) -> bool:
        return "-" in self.port

    def replaceable_port(self) -> bool:
        return "{" in self.port and "}" in self.port


_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _url_host_port(raw: str) -> tuple[str, str, str, bool]:
    """A small Go `url.Parse` for `scheme://host[:port]...`: (scheme, host, port, extra).

    `extra` says whether a path, query or fragment follows. Errors read like Go's.
    """
    scheme, _, rest = raw.partition("://")
    if not scheme:
        raise UpstreamError(f"parse {go_quote(raw)}: missing protocol scheme")
    if not _SCHEME_RE.fullmatch(scheme):
        raise UpstreamError(
            f"parse {go_quote(raw)}: first path segment in URL cannot contain colon"
        )
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise UpstreamError(f"parse {go_quote(raw)}: missing ']' in host")
        host, colon_port = hostport[1:end], hostport[end + 1 :]
    else:
        colon = hostport.rfind(":")
        host, colon_port = (hostport, "") if colon < 0 else (hostport[:colon], hostport[colon:])
    port_digits = colon_port[1:]
    # Go's validOptionalPort: "" or ":" followed by ASCII digits (possibly none).
    valid_port = colon_port in ("", ":") or (
        colon_port.startswith(":") and port_digits.isascii() and port_digits.isdigit()
    )
    if not valid_port:
        raise UpstreamError(
            f"parse {go_quote(raw)}: invalid port {go_quote(colon_port)} after host"
        )
    return scheme.lower(), host, colon_port[1:], bool(path or query or fragment)


def parse_upstream_address(addr: str) -> ParsedUpstream:
    """Split an upstream address into network, scheme, host and port (with defaults)."""
    network = scheme = host = port = ""
    if "://" in addr:
        if "{" in addr:
            raise UpstreamError(
                "due to parsing difficulties, placeholders are not allowed when an upstream "
                "address contains a scheme"
            )
        try:
            scheme, host, port, extra = _url_host_port(addr)
        except UpstreamError as exc:
            # Go's url.Parse rejects "host:8000-8003"; parse it with a stand-in port and
            # keep the range.
            if "invalid port" not in str(exc) or "-" not in str(exc):
                raise UpstreamError(f"parsing upstream URL: {exc}") from None
            port_range = addr[addr.rfind(":") + 1 :]
            if port_range.count("-") != 1:
                raise UpstreamError(
                    f"parsing upstream URL: parse {go_quote(addr)}: "
                    f"port range invalid: {port_range}"
                ) from None
            try:
                scheme, host, _, extra = _url_host_port(addr.replace(port_range, "0"))
            except UpstreamError as exc2:
                raise UpstreamError(f"parsing upstream URL: {exc2}") from None
            port = port_range
        if extra:
            raise UpstreamError(_PATH_IN_UPSTREAM)
        for bad_scheme, bad_port, meaning in (
            ("http", "443", "HTTPS"),
            ("https", "80", "HTTP"),
            ("h2c", "443", "HTTPS"),
        ):
            if scheme == bad_scheme and port == bad_port:
                raise UpstreamError(
                    f"upstream address has conflicting scheme ({scheme}://) and port "
                    f"(:{port}, the {meaning} port)"
                )
        if not port:
            port = "443" if scheme == "https" else "80" if scheme in ("", "http", "h2c") else ""
    else:
        network, host, port, ok = split_network_address(addr)
        if not ok:
            host = addr
        if network and network not in _KNOWN_NETWORKS and not network.startswith("ip"):
            raise UpstreamError(_PATH_IN_UPSTREAM)
        if not port and "{" not in host and not _is_unix(network) and not _is_fd(network):
            port = "80"
    if network == "unix+h2c":
        network, scheme = "unix", "h2c"
    return ParsedUpstream(network, scheme, host, port)


def expand_upstream(parsed: ParsedUpstream) -> list[str]:
    """The dial addresses of one upstream: one, or one per port of a range."""
    dial = parsed.dial_address()
    if parsed.replaceable_port():
        return [dial]
    network, host, port, _ = split_network_address(dial)
    if _is_unix(network) or _is_fd(network):
        return [dial]
    start, end = parse_port_range(port) if port else (0, 0)
    if not parsed.ranged_port():
        return [dial]
    return [join_network_address("", host, str(p)) for p in range(start, end + 1)]


# -- the handler --------------------------------------------------------------------------------


def _node(root: JSONDict, *path: str) -> JSONDict:
    node = root
    for key in path:
        node = node.setdefault(key, {})
    return node


def _duration_arg(d: Dispenser, label: str, quote: bool = True, allow_int: bool = False) -> int:
    """The next argument as a duration; `label` words the error like Caddy does."""
    if not d.next_arg():
        raise d.arg_err()
    text = d.val()
    if allow_int:
        # flush_interval & co. take a bare integer as nanoseconds (-1 = flush at once).
        try:
            return go_atoi(text)
        except GoNumError:
            pass
    try:
        return parse_duration(text)
    except DurationError as exc:
        shown = f"'{text}'" if quote else text
        raise d.err(f"{label} {shown}: {exc}") from None


def _int_arg(d: Dispenser, label: str) -> int:
    if not d.next_arg():
        raise d.arg_err()
    try:
        return go_atoi(d.val())
    except GoNumError as exc:
        raise d.err(f"{label} '{d.val()}': {exc}") from None


def _string_arg(d: Dispenser) -> str:
    if not d.next_arg():
        raise d.arg_err()
    return d.val()


def _module_not_registered(d: Dispenser, module_id: str) -> ConfigError:
    return d.err(f"getting module named '{module_id}': module not registered: {module_id}")


# Selection policies: name → parser over a Dispenser positioned before the policy name.
def _no_arg_policy(d: Dispenser) -> JSONDict:
    d.next()
    if d.next_arg():
        raise d.arg_err()
    return {}


def _weighted_round_robin(d: Dispenser) -> JSONDict:
    d.next()
    args = d.remaining_args()
    if not args:
        raise d.arg_err()
    weights = []
    for weight in args:
        try:
            value = go_atoi(weight)
        except GoNumError as exc:
            raise d.err(f"invalid weight value '{weight}': {exc}") from None
        if value < 0:
            raise d.err(f"invalid weight value '{weight}': weight should be non-negative")
        weights.append(value)
    return {"weights": weights}


def _random_choose(d: Dispenser) -> JSONDict:
    d.next()
    if not d.next_arg():
        raise d.arg_err()
    try:
        choose = go_atoi(d.val())
    except GoNumError as exc:
        raise d.err(f"invalid choice value '{d.val()}': {exc}") from None
    return {"choose": choose} if choose else {}


def _fallback_option(d: Dispenser, out: JSONDict) -> None:
    if not d.next_arg():
        raise d.arg_err()
    if "fallback" in out:
        raise d.err("fallback selection policy already specified")
    out["fallback"] = parse_selection_policy(d)


def _hash_by_key_policy(key_field: str) -> Callable[[Dispenser], JSONDict]:
    def parse(d: Dispenser) -> JSONDict:
        d.next()
        if not d.next_arg():
            raise d.arg_err()
        out: JSONDict = {}
        if d.val():
            out[key_field] = d.val()
        while d.next_block(0):
            if d.val() == "fallback":
                _fallback_option(d, out)
            else:
                raise d.err(f"unrecognized option '{d.val()}'")
        return out

    return parse


def _cookie_policy(d: Dispenser) -> JSONDict:
    args = d.remaining_args()  # includes the policy name itself
    out: JSONDict = {}
    if len(args) not in (1, 2, 3):
        raise d.arg_err()
    if len(args) >= 2 and args[1]:
        out["name"] = args[1]
    if len(args) == 3 and args[2]:
        out["secret"] = args[2]
    while d.next_block(0):
        option = d.val()
        if option == "fallback":
            _fallback_option(d, out)
        elif option == "max_age":
            if not d.next_arg():
                raise d.arg_err()
            if out.get("max_age"):
                raise d.err("cookie max_age already specified")
            try:
                max_age = parse_duration(d.val())
            except DurationError:
                raise d.err(f"invalid duration: {d.val()}") from None
            if max_age <= 0:
                raise d.err(f"invalid duration: {d.val()}, max_age should be non-zero and positive")
            if d.next_arg():
                raise d.arg_err()
            out["max_age"] = max_age
        else:
            raise d.err(f"unrecognized option '{option}'")
    return out


SELECTION_POLICIES: dict[str, Callable[[Dispenser], JSONDict]] = {
    "random": _no_arg_policy,
    "random_choose": _random_choose,
    "least_conn": _no_arg_policy,
    "round_robin": _no_arg_policy,
    "weighted_round_robin": _weighted_round_robin,
    "first": _no_arg_policy,
    "ip_hash": _no_arg_policy,
    "client_ip_hash": _no_arg_policy,
    "uri_hash": _no_arg_policy,
    "query": _hash_by_key_policy("key"),
    "header": _hash_by_key_policy("field"),
    "cookie": _cookie_policy,
}


def parse_selection_policy(d: Dispenser) -> JSONDict:
    """The policy named by the current token (with its arguments and block)."""
    name = d.val()
    parser = SELECTION_POLICIES.get(name)
    if parser is None:
        raise _module_not_registered(d, f"http.reverse_proxy.selection_policies.{name}")
    return {"policy": name, **parser(d.new_from_next_segment())}


# TLS CA pool sources for `tls_trust_pool` (the `tls` directive's helper may add more).
def _file_ca_pool(d: Dispenser) -> JSONDict:
    d.next()
    files = d.remaining_args()
    while d.next_block(0):
        if d.val() != "pem_file":
            raise d.err(f"unrecognized directive: {d.val()}")
        files.extend(d.remaining_args())
    if not files:
        raise d.err("no certificates specified")
    return {"pem_files": files}


def _inline_ca_pool(d: Dispenser) -> JSONDict:
    d.next()
    if d.count_remaining_args() > 0:
        raise d.arg_err()
    certs: list[str] = []
    while d.next_block(0):
        if d.val() != "trust_der":
            raise d.err(f"unrecognized directive: {d.val()}")
        certs.extend(d.remaining_args())
    if not certs:
        raise d.err("no certificates specified")
    return {"trusted_ca_certs": certs}


CA_POOL_SOURCES: dict[str, Callable[[Dispenser], JSONDict]] = {
    "file": _file_ca_pool,
    "inline": _inline_ca_pool,
}


def _network_proxy(d: Dispenser) -> JSONDict:
    name = d.val()
    sub = d.new_from_next_segment()
    if name == "none":
        return {"from": "none"}
    if name == "url":
        sub.next()
        sub.next()
        return {"from": "url", "url": sub.val()}
    raise _module_not_registered(d, f"caddy.network_proxy.{name}")


# -- transport http -----------------------------------------------------------------------------


def parse_http_transport(d: Dispenser) -> JSONDict:
    """`transport http { ... }`: the HTTP transport's JSON (without "protocol")."""
    t: JSONDict = {}

    def tls() -> JSONDict:
        return _node(t, "tls")

    def keepalive() -> JSONDict:
        return _node(t, "keep_alive")

    def size_arg(label: str) -> int:
        if not d.next_arg():
            raise d.arg_err()
        try:
            return parse_bytes(d.val())
        except ValueError as exc:
            raise d.err(f"invalid {label} '{d.val()}': {exc}") from None

    d.next()  # the transport name
    while d.next_block(0):
        option = d.val()
        if option == "read_buffer":
            t["read_buffer_size"] = size_arg("read buffer size")
        elif option == "write_buffer":
            t["write_buffer_size"] = size_arg("write buffer size")
        elif option == "max_response_header":
            t["max_response_header_size"] = size_arg("max response header size")
        elif option == "read_timeout":
            t["read_timeout"] = _duration_arg(d, "invalid read timeout duration")
        elif option == "write_timeout":
            t["write_timeout"] = _duration_arg(d, "invalid write timeout duration")
        elif option == "proxy_protocol":
            version = _string_arg(d)
            if version not in ("v1", "v2"):
                raise d.err(f"invalid proxy protocol version '{version}'")
            t["proxy_protocol"] = version
        elif option == "forward_proxy_url":
            t["network_proxy"] = {"from": "url", "url": _string_arg(d)}
        elif option == "network_proxy":
            if not d.next_arg():
                raise d.arg_err()
            t["network_proxy"] = _network_proxy(d)
        elif option == "dial_timeout":
            t["dial_timeout"] = _duration_arg(d, "bad timeout value")
        elif option == "dial_fallback_delay":
            t["dial_fallback_delay"] = _duration_arg(d, "bad fallback delay value")
        elif option == "response_header_timeout":
            t["response_header_timeout"] = _duration_arg(d, "bad timeout value")
        elif option == "expect_continue_timeout":
            t["expect_continue_timeout"] = _duration_arg(d, "bad timeout value")
        elif option == "resolvers":
            addresses = d.remaining_args()
            if not addresses:
                raise d.err("must specify at least one resolver address")
            t["resolver"] = {"addresses": addresses}
        elif option == "tls":
            tls()
        elif option == "tls_client_auth":
            args = d.remaining_args()
            if len(args) == 1:
                tls()["client_certificate_automate"] = args[0]
            elif len(args) == 2:
                tls()["client_certificate_file"] = args[0]
                tls()["client_certificate_key_file"] = args[1]
            else:
                raise d.arg_err()
        elif option == "tls_insecure_skip_verify":
            if d.next_arg():
                raise d.arg_err()
            tls()["insecure_skip_verify"] = True
        elif option == "tls_curves":
            curves = d.remaining_args()
            if not curves:
                raise d.arg_err()
            tls()["curves"] = curves
        elif option == "tls_timeout":
            tls()["handshake_timeout"] = _duration_arg(d, "bad timeout value")
        elif option == "tls_trusted_ca_certs":
            files = d.remaining_args()
            if not files:
                raise d.arg_err()
            if tls().get("ca"):
                raise d.err("cannot specify both 'tls_trust_pool' and 'tls_trusted_ca_certs")
            tls()["root_ca_pem_files"] = files
        elif option == "tls_server_name":
            tls()["server_name"] = _string_arg(d)
        elif option == "tls_renegotiation":
            tls()
            value = _string_arg(d)
            if value not in ("never", "once", "freely"):
                raise d.arg_err()
            tls()["renegotiation"] = value
        elif option == "tls_except_ports":
            ports = d.remaining_args()
            if not ports:
                raise d.arg_err()
            tls()["except_ports"] = ports
        elif option == "keepalive":
            value = _string_arg(d)
            if value == "off":
                keepalive()["enabled"] = False
            else:
                try:
                    keepalive()["idle_timeout"] = parse_duration(value)
                except DurationError as exc:
                    raise d.err(f"bad duration value '{value}': {exc}") from None
        elif option == "keepalive_interval":
            keepalive()["probe_interval"] = _duration_arg(d, "bad interval value")
        elif option == "keepalive_idle_conns":
            keepalive()["max_idle_conns"] = _int_arg(d, "bad integer value")
        elif option == "keepalive_idle_conns_per_host":
            keepalive()["max_idle_conns_per_host"] = _int_arg(d, "bad integer value")
        elif option == "versions":
            versions = d.remaining_args()
            if not versions:
                raise d.arg_err()
            t["versions"] = versions
        elif option == "compression":
            if d.next_arg() and d.val() == "off":
                t["compression"] = False
        elif option == "max_conns_per_host":
            t["max_conns_per_host"] = _int_arg(d, "bad integer value")
        elif option == "tls_trust_pool":
            if not d.next_arg():
                raise d.arg_err()
            source = d.val()
            parser = CA_POOL_SOURCES.get(source)
            if parser is None:
                raise _module_not_registered(d, f"tls.ca_pool.source.{source}")
            pool = parser(d.new_from_next_segment())
            if tls().get("root_ca_pem_files"):
                raise d.err("cannot specify both 'tls_trust_pool' and 'tls_trusted_ca_certs'")
            if "ca" in tls():
                raise d.err('cannot specify "tls_trust_pool" twice in caddyfile')
            tls()["ca"] = {"provider": source, **pool}
        elif option == "local_address":
            t["local_address"] = _string_arg(d)
        else:
            raise d.err(f"unrecognized subdirective {option}")
    return _drop_zero(t)


def _drop_zero(t: JSONDict) -> JSONDict:
    """Go's omitempty: zero numbers and empty strings vanish; pointer fields stay.

    Pointers are the nested objects (`tls {}` enables TLS, `keep_alive {}`) and the two
    `*bool` fields, whose `false` is meaningful.
    """
    out: JSONDict = {}
    for key, value in t.items():
        if isinstance(value, dict):
            out[key] = _drop_zero(value)
        elif value or (isinstance(value, bool) and key in ("enabled", "compression")):
            out[key] = value
    return out


def parse_fastcgi_transport(d: Dispenser) -> JSONDict:
    """`transport fastcgi { ... }` (what `php_fastcgi` configures, also usable directly)."""
    t: JSONDict = {}
    d.next()  # the transport name
    while d.next_block(0):
        option = d.val()
        if option == "root":
            t["root"] = _string_arg(d)
        elif option == "split":
            split = d.remaining_args()
            if not split:
                raise d.arg_err()
            t["split_path"] = split
        elif option == "env":
            args = d.remaining_args()
            if len(args) != 2:
                raise d.arg_err()
            t.setdefault("env", {})[args[0]] = args[1]
        elif option in ("resolve_root_symlink", "capture_stderr"):
            if d.next_arg():
                raise d.arg_err()
            t[option] = True
        elif option in ("dial_timeout", "read_timeout", "write_timeout"):
            t[option] = _duration_arg(d, "bad timeout value", quote=False)
        else:
            raise d.err(f"unrecognized subdirective {option}")
    return {k: v for k, v in t.items() if v}


TRANSPORTS: dict[str, Callable[[Dispenser], JSONDict]] = {
    "http": parse_http_transport,
    "fastcgi": parse_fastcgi_transport,
}


# -- dynamic upstreams --------------------------------------------------------------------------


def _dynamic_srv(d: Dispenser) -> JSONDict:
    d.next()
    args = d.remaining_args()
    if len(args) > 1:
        raise d.arg_err()
    out: JSONDict = {}
    if args:
        out["name"] = args[0]
    while d.next_block(0):
        option = d.val()
        if option in ("service", "proto", "name"):
            _unique_string_option(d, out, option, "srv")
        elif option == "grace_period":
            out["grace_period"] = _duration_arg(d, "bad grace period value")
        elif not _dns_source_option(d, out, option):
            raise d.err(f"unrecognized srv option '{option}'")
    return {k: v for k, v in out.items() if v}


def _unique_string_option(d: Dispenser, out: JSONDict, option: str, source: str) -> None:
    value = _string_arg(d)
    if out.get(option):
        raise d.err(f"{source} {option} has already been specified")
    out[option] = value


def _dns_source_option(d: Dispenser, out: JSONDict, option: str) -> bool:
    """The options `dynamic a` and `dynamic srv` share; False when `option` is not one."""
    if option == "refresh":
        out["refresh"] = _refresh_arg(d)
    elif option == "resolvers":
        out["resolver"] = {"addresses": _resolvers(d)}
    elif option == "dial_timeout":
        out["dial_timeout"] = _duration_arg(d, "bad timeout value")
    elif option == "dial_fallback_delay":
        out["dial_fallback_delay"] = _duration_arg(d, "bad delay value")
    else:
        return False
    return True


def _refresh_arg(d: Dispenser) -> int:
    text = _string_arg(d)
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise d.err(f"parsing refresh interval duration: {exc}") from None


def _resolvers(d: Dispenser) -> list[str]:
    addresses = d.remaining_args()
    if not addresses:
        raise d.err("must specify at least one resolver address")
    return addresses


def _dynamic_a(d: Dispenser) -> JSONDict:
    d.next()
    args = d.remaining_args()
    if len(args) > 2:
        raise d.arg_err()
    out: JSONDict = {}
    if args:
        out["name"] = args[0]
        if len(args) == 2:
            out["port"] = args[1]
    while d.next_block(0):
        option = d.val()
        if option in ("name", "port"):
            _unique_string_option(d, out, option, "a")
        elif _dns_source_option(d, out, option):
            pass
        elif option == "versions":
            versions = d.remaining_args()
            if not versions:
                raise d.err("must specify at least one version")
            chosen = out.setdefault("versions", {})
            for version in versions:
                if version not in ("ipv4", "ipv6"):
                    raise d.err(f"unsupported version: '{version}'")
                chosen[version] = True
        else:
            raise d.err(f"unrecognized a option '{option}'")
    return {k: v for k, v in out.items() if v}


def _dynamic_multi(d: Dispenser) -> JSONDict:
    d.next()
    if d.next_arg():
        raise d.arg_err()
    sources = []
    while d.next_block(0):
        sources.append(parse_dynamic_source(d))
    return {"sources": sources} if sources else {}


DYNAMIC_SOURCES: dict[str, Callable[[Dispenser], JSONDict]] = {
    "a": _dynamic_a,
    "srv": _dynamic_srv,
    "multi": _dynamic_multi,
}


def parse_dynamic_source(d: Dispenser) -> JSONDict:
    name = d.val()
    parser = DYNAMIC_SOURCES.get(name)
    if parser is None:
        raise _module_not_registered(d, f"http.reverse_proxy.upstreams.{name}")
    return {"source": name, **parser(d.new_from_next_segment())}


# -- reverse_proxy itself -----------------------------------------------------------------------

_HEADER_UP_DEFAULTS = {
    "x-forwarded-for": (
        *("{remote}", "{http.request.remote}"),
        *("{remote_host}", "{http.request.remote.host}"),
    ),
    "x-forwarded-proto": ("{scheme}", "{http.request.scheme}"),
    "x-forwarded-host": (
        *("{host}", "{http.request.host}"),
        *("{hostport}", "{http.request.hostport}"),
    ),
}


class _ReverseProxyParser:
    """Holds the handler being built while the block is read (one per directive)."""

    def __init__(self, h: Helper) -> None:
        self.h = h
        self.d: Dispenser = h.dispenser
        self.handler: JSONDict = {"handler": "reverse_proxy"}
        self.upstreams: list[JSONDict] = []
        self.common_scheme = ""
        self.transport: JSONDict | None = None
        self.transport_name = ""
        self.response_matchers: dict[str, JSONDict] = {}
        self.handle_response_segments: list[Dispenser] = []
        self.handle_response: list[JSONDict] = []

    # -- upstreams --

    def add_upstream(self, address: str) -> None:
        try:
            parsed = parse_upstream_address(address)
        except UpstreamError as exc:
            raise self._upstream_error(address, str(exc)) from None
        scheme = parsed.scheme
        if scheme == "wss":
            raise self._upstream_error(
                address, "the scheme wss:// is only supported in browsers; use https:// instead"
            )
        if scheme == "ws":
            raise self._upstream_error(
                address, "the scheme ws:// is only supported in browsers; use http:// instead"
            )
        if scheme not in ("https", "http", "h2c", ""):
            raise self._upstream_error(address, f"unsupported URL scheme {scheme}://")
        if self.common_scheme and scheme != self.common_scheme:
            raise self._upstream_error(
                address,
                "for now, all proxy upstreams must use the same scheme (transport protocol); "
                f"expecting '{self.common_scheme}://' but got '{scheme}://'",
            )
        self.common_scheme = scheme
        try:
            dials = expand_upstream(parsed)
        except UpstreamError as exc:
            raise self._upstream_error(address, str(exc)) from None
        self.upstreams.extend({"dial": dial} for dial in dials)

    def _upstream_error(self, address: str, message: str) -> ConfigError:
        inner = self.d.err(message)
        return ConfigError(f"parsing upstream '{address}': {inner.message}", inner.file, inner.line)

    # -- the block --

    def parse(self) -> JSONDict:
        d = self.d
        d.next()  # the directive name
        for address in d.remaining_args():
            self.add_upstream(address)

        while d.next_block(0):
            option = d.val()
            if option.startswith("@"):
                parse_named_response_matcher(d.new_from_next_segment(), self.response_matchers)
                continue
            method = getattr(self, "opt_" + option, None)
            if method is None:
                raise d.err(f"unrecognized subdirective {option}")
            method()

        self.finish_transport()
        self.finish_handle_response()
        if self.upstreams:
            self.handler["upstreams"] = self.upstreams
        return self.handler

    def finish_transport(self) -> None:
        d = self.d
        transport = self.transport
        if self.common_scheme in ("https", "h2c") and transport is None:
            transport, self.transport_name = {}, "http"
        if transport is None:
            return
        if self.transport_name == "http":
            if self.common_scheme == "https" and "tls" not in transport:
                transport["tls"] = {}
            if self.common_scheme == "http" and "tls" in transport:
                raise d.err(
                    "upstream address scheme is HTTP but transport is configured for "
                    "HTTP+TLS (HTTPS)"
                )
            if self.common_scheme == "h2c":
                transport["versions"] = ["h2c", "2"]
            host = self.handler.get("headers", {}).get("request", {}).get("set", {}).get("Host")
            if "tls" in transport and host in (
                ["{upstream_hostport}"],
                ["{http.reverse_proxy.upstream.hostport}"],
            ):
                self.h.warn(
                    "Unnecessary header_up Host: the reverse proxy's default behavior is to "
                    "pass the configured upstream address to the upstream when proxying to HTTPS"
                )
        elif self.common_scheme == "https":
            raise d.err(
                "upstreams are configured for HTTPS but transport module does not support TLS: "
                f"{self.transport_name}"
            )
        # An HTTP transport with only defaults is left out; any other transport is kept.
        if transport or self.transport_name != "http":
            self.handler["transport"] = {"protocol": self.transport_name, **transport}

    def finish_handle_response(self) -> None:
        for segment in self.handle_response_segments:
            segment.next()
            args = segment.remaining_args()
            if len(args) > 1:
                raise segment.err(
                    "too many arguments for 'handle_response': only a single response "
                    f"matcher name is allowed, but got: [{' '.join(args)}]"
                )
            entry: JSONDict = {}
            if args:
                entry["match"] = self._named_response_matcher(segment, args[0])
            routes = _parse_segment_as_subroute(self.h, segment.new_from_next_segment())
            if routes:
                entry["routes"] = routes
            self.handle_response.append(entry)
        # Handlers with a matcher are tried first, in order; the catch-alls after them.
        ordered = [r for r in self.handle_response if "match" in r]
        ordered += [r for r in self.handle_response if "match" not in r]
        if ordered:
            self.handler["handle_response"] = ordered

    def _named_response_matcher(self, d: Dispenser, name: str) -> JSONDict:
        if not name.startswith("@"):
            raise d.err("must use a named response matcher, starting with '@'")
        if name not in self.response_matchers:
            raise d.err(f"no named response matcher defined with name '{name[1:]}'")
        return self.response_matchers[name]

    # -- helpers for subdirectives --

    def _lb(self) -> JSONDict:
        return _node(self.handler, "load_balancing")

    def _active(self) -> JSONDict:
        return _node(self.handler, "health_checks", "active")

    def _passive(self) -> JSONDict:
        return _node(self.handler, "health_checks", "passive")

    @staticmethod
    def _set_nonzero(node: JSONDict, key: str, value: Any) -> None:
        # omitempty: a zero value simply leaves the field out.
        if value:
            node[key] = value
        else:
            node.pop(key, None)

    # -- subdirectives (opt_<name>) --

    def opt_to(self) -> None:
        args = self.d.remaining_args()
        if not args:
            raise self.d.arg_err()
        for address in args:
            self.add_upstream(address)

    def opt_dynamic(self) -> None:
        d = self.d
        if not d.next_arg():
            raise d.arg_err()
        if "dynamic_upstreams" in self.handler:
            raise d.err("dynamic upstreams already specified")
        self.handler["dynamic_upstreams"] = parse_dynamic_source(d)

    def opt_lb_policy(self) -> None:
        d = self.d
        if not d.next_arg():
            raise d.arg_err()
        if "selection_policy" in self.handler.get("load_balancing", {}):
            raise d.err("load balancing selection policy already specified")
        self._lb()["selection_policy"] = parse_selection_policy(d)

    def opt_lb_retries(self) -> None:
        d = self.d
        if not d.next_arg():
            raise d.arg_err()
        try:
            retries = go_atoi(d.val())
        except GoNumError as exc:
            raise d.err(f"bad lb_retries number '{d.val()}': {exc}") from None
        self._set_nonzero(self._lb(), "retries", retries)

    def opt_lb_try_duration(self) -> None:
        self._set_nonzero(
            self._lb(), "try_duration", _duration_arg(self.d, "bad duration value", quote=False)
        )

    def opt_lb_try_interval(self) -> None:
        self._set_nonzero(self._lb(), "try_interval", _duration_arg(self.d, "bad interval value"))

    def opt_lb_retry_match(self) -> None:
        d = self.d
        try:
            matcher_set = parse_nested_matcher_set(d)
        except ConfigError as exc:
            raise d.err(f"failed to parse lb_retry_match: {exc.message}") from None
        self._lb().setdefault("retry_match", []).append(matcher_set)

    def opt_health_uri(self) -> None:
        self._set_nonzero(self._active(), "uri", _string_arg(self.d))

    def opt_health_path(self) -> None:
        self._set_nonzero(self._active(), "path", _string_arg(self.d))
        self.h.warn(
            "the 'health_path' subdirective is deprecated, please use 'health_uri' instead!"
        )

    def opt_health_upstream(self) -> None:
        d = self.d
        value = _string_arg(d)
        active = self._active()
        try:
            _, port = _split_host_port(value)
        except ValueError as exc:
            raise d.err(f"health_upstream is malformed '{value}': address {value}: {exc}") from None
        try:
            go_atoi(port)
        except GoNumError as exc:
            raise d.err(f"bad port number '{value}': {exc}") from None
        active["upstream"] = value

    def opt_health_port(self) -> None:
        d = self.d
        if not d.next_arg():
            raise d.arg_err()
        active = self._active()
        if active.get("upstream"):
            raise d.err("the 'health_port' subdirective is ignored if 'health_upstream' is used!")
        try:
            port = go_atoi(d.val())
        except GoNumError as exc:
            raise d.err(f"bad port number '{d.val()}': {exc}") from None
        self._set_nonzero(active, "port", port)

    def opt_health_headers(self) -> None:
        d = self.d
        headers: dict[str, list[str]] = {}
        nesting = d.nesting
        while d.next_block(nesting):
            key = d.val()
            values = d.remaining_args() or [""]
            # Written straight into the map in Caddy, so names are kept as written.
            headers.setdefault(key, []).extend(values)
        self._set_nonzero(self._active(), "headers", headers)

    def opt_health_method(self) -> None:
        self._set_nonzero(self._active(), "method", _string_arg(self.d))

    def opt_health_request_body(self) -> None:
        self._set_nonzero(self._active(), "body", _string_arg(self.d))

    def opt_health_interval(self) -> None:
        self._set_nonzero(
            self._active(), "interval", _duration_arg(self.d, "bad interval value", quote=False)
        )

    def opt_health_timeout(self) -> None:
        self._set_nonzero(
            self._active(), "timeout", _duration_arg(self.d, "bad timeout value", quote=False)
        )

    def opt_health_status(self) -> None:
        d = self.d
        if not d.next_arg():
            raise d.arg_err()
        active = self._active()
        value = d.val()
        text = value[:1] if len(value) == 3 and value.endswith("xx") else value
        try:
            status = go_atoi(text)
        except GoNumError as exc:
            raise d.err(f"bad status value '{value}': {exc}") from None
        self._set_nonzero(active, "expect_status", status)

    def opt_health_body(self) -> None:
        self._set_nonzero(self._active(), "expect_body", _string_arg(self.d))

    def opt_health_follow_redirects(self) -> None:
        if self.d.next_arg():
            raise self.d.arg_err()
        self._active()["follow_redirects"] = True

    def opt_health_passes(self) -> None:
        self._set_nonzero(self._active(), "passes", _int_arg(self.d, "invalid passes count"))

    def opt_health_fails(self) -> None:
        self._set_nonzero(self._active(), "fails", _int_arg(self.d, "invalid fails count"))

    def opt_max_fails(self) -> None:
        self._set_nonzero(
            self._passive(), "max_fails", _int_arg(self.d, "invalid maximum fail count")
        )

    def opt_fail_duration(self) -> None:
        self._set_nonzero(
            self._passive(), "fail_duration", _duration_arg(self.d, "bad duration value")
        )

    def opt_unhealthy_request_count(self) -> None:
        self._set_nonzero(
            self._passive(),
            "unhealthy_request_count",
            _int_arg(self.d, "invalid maximum connection count"),
        )

    def opt_unhealthy_status(self) -> None:
        d = self.d
        args = d.remaining_args()
        if not args:
            raise d.arg_err()
        passive = self._passive()
        passive.setdefault("unhealthy_status", []).extend(parse_status_codes(d, args))

    def opt_unhealthy_latency(self) -> None:
        self._set_nonzero(
            self._passive(), "unhealthy_latency", _duration_arg(self.d, "bad duration value")
        )

    def opt_flush_interval(self) -> None:
        self._set_nonzero(
            self.handler,
            "flush_interval",
            _duration_arg(self.d, "bad duration value", allow_int=True),
        )

    def _buffer_size(self, key: str) -> None:
        d = self.d
        if not d.next_arg():
            raise d.arg_err()
        value = d.val()
        if value == "unlimited":
            size = -1
        else:
            try:
                size = parse_bytes(value)
            except ValueError as exc:
                raise d.err(f"invalid byte size '{value}': {exc}") from None
        if d.next_arg():
            raise d.arg_err()
        self._set_nonzero(self.handler, key, size)

    def opt_request_buffers(self) -> None:
        self._buffer_size("request_buffers")

    def opt_response_buffers(self) -> None:
        self._buffer_size("response_buffers")

    def opt_stream_buffer_size(self) -> None:
        self._buffer_size("stream_buffer_size")

    def opt_stream_timeout(self) -> None:
        self._set_nonzero(
            self.handler,
            "stream_timeout",
            _duration_arg(self.d, "bad duration value", allow_int=True),
        )

    def opt_stream_close_delay(self) -> None:
        self._set_nonzero(
            self.handler,
            "stream_close_delay",
            _duration_arg(self.d, "bad duration value", allow_int=True),
        )

    def opt_trusted_proxies(self) -> None:
        d = self.d
        proxies = self.handler.setdefault("trusted_proxies", [])
        while d.next_arg():
            if d.val() == "private_ranges":
                proxies.extend(PRIVATE_RANGES)
            else:
                proxies.append(d.val())
        if not proxies:
            del self.handler["trusted_proxies"]

    def _header_op(self, ops: JSONDict, up: bool) -> None:
        d = self.d
        args = d.remaining_args()
        if not 1 <= len(args) <= 3:
            raise d.arg_err()
        if up and len(args) == 2:
            defaults = _HEADER_UP_DEFAULTS.get(args[0].lower(), ())
            if args[1] in defaults:
                self.h.warn(
                    f"Unnecessary header_up {args[0]}: the reverse proxy's default behavior "
                    "is to pass headers to the upstream"
                )
        value = args[1] if len(args) >= 2 else ""
        replacement = args[2] if len(args) == 3 else None
        try:
            caddyfile_header_op(ops, args[0], value, replacement)
        except HeaderOpError as exc:
            raise d.err(str(exc)) from None

    def opt_header_up(self) -> None:
        self._header_op(_node(self.handler, "headers", "request"), up=True)

    def opt_header_down(self) -> None:
        self._header_op(_node(self.handler, "headers", "response"), up=False)

    def _rewrite_field(self, key: str) -> None:
        d = self.d
        value = _string_arg(d)
        rewrite = _node(self.handler, "rewrite")
        self._set_nonzero(rewrite, key, value)
        if d.next_arg():
            raise d.arg_err()

    def opt_method(self) -> None:
        self._rewrite_field("method")

    def opt_rewrite(self) -> None:
        self._rewrite_field("uri")

    def opt_transport(self) -> None:
        d = self.d
        if not d.next_arg():
            raise d.arg_err()
        if self.transport is not None:
            raise d.err("transport already specified")
        name = d.val()
        parser = TRANSPORTS.get(name)
        if parser is None:
            raise _module_not_registered(d, f"http.reverse_proxy.transport.{name}")
        self.transport_name = name
        self.transport = parser(d.new_from_next_segment())

    def opt_handle_response(self) -> None:
        self.handle_response_segments.append(self.d.new_from_next_segment())

    def opt_replace_status(self) -> None:
        d = self.d
        args = d.remaining_args()
        if len(args) not in (1, 2):
            raise d.err(
                "must have one or two arguments: an optional response matcher, and a status code"
            )
        entry: JSONDict = {}
        if len(args) == 2:
            entry["match"] = self._named_response_matcher(d, args[0])
        status = args[-1]
        # Caddy's WeakString: a number stays a JSON number, anything else a string.
        try:
            entry["status_code"] = go_atoi(status)
        except GoNumError:
            entry["status_code"] = status
        if d.next_block(d.nesting):
            raise d.err("cannot define routes for 'replace_status', use 'handle_response' instead.")
        self.handle_response.append(entry)

    def opt_verbose_logs(self) -> None:
        if self.handler.get("verbose_logs"):
            raise self.d.err("verbose_logs already specified")
        self.handler["verbose_logs"] = True


def _parse_segment_as_subroute(h: Helper, segment: Dispenser) -> list[JSONDict]:
    """Routes of a `handle_response` block, parsed like a `handle` block by the core."""
    # Imported here: the core imports the directive modules (this one included).
    from config.adapt.directive_order import parse_segment_as_subroute

    subroute = parse_segment_as_subroute(h.with_dispenser(segment))
    routes = subroute.get("routes", [])
    return list(routes) if isinstance(routes, list) else []


def parse_reverse_proxy(h: Helper) -> JSONDict:
    return _ReverseProxyParser(h).parse()


def parse_copy_response(h: Helper) -> JSONDict:
    """`copy_response [<matcher>] [<status>] { status <status> }` (inside handle_response)."""
    h.next()
    handler: JSONDict = {"handler": "copy_response"}
    args = h.remaining_args()
    if len(args) == 1:
        try:
            status = go_atoi(args[0])
        except GoNumError:
            status = 0
        if status > 0:
            handler["status_code"] = status
            return handler
    while h.next_block(0):
        if h.val() != "status":
            raise h.err(f"unrecognized subdirective '{h.val()}'")
        value = _string_arg(h.dispenser)
        try:
            handler["status_code"] = go_atoi(value)
        except GoNumError:
            handler["status_code"] = value  # a placeholder (Caddy's WeakString)
    return handler


def parse_copy_response_headers(h: Helper) -> JSONDict:
    """`copy_response_headers [<matcher>] { include <fields...>; exclude <fields...> }`."""
    h.next()
    if h.remaining_args():
        raise h.arg_err()
    handler: JSONDict = {"handler": "copy_response_headers"}
    while h.next_block(0):
        option = h.val()
        if option not in ("include", "exclude"):
            raise h.err(f"unrecognized subdirective '{option}'")
        fields = h.remaining_args()
        if fields:
            handler.setdefault(option, []).extend(fields)
    return handler


register_handler_directive("reverse_proxy", parse_reverse_proxy)
register_handler_directive("copy_response", parse_copy_response)
register_handler_directive("copy_response_headers", parse_copy_response_headers)
