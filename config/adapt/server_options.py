"""The `servers` global option: per-listener HTTP server settings (serveroptions.go).

`servers [<listener address>] { ... }` may appear several times; each one applies to the
servers whose listen list contains its address (or to all, without an address). The
`name` sub-option renames the server (`srv0` → `name`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.adapt.helper import JSONDict
from config.caddyfile.dispenser import Dispenser
from config.errors import ConfigError
from config.go_values import PRIVATE_RANGES, DurationError, SizeError, parse_bytes, parse_duration


@dataclass
class ServerOptions:
    listener_address: str = ""
    name: str = ""
    # the JSON fields this entry sets on a server, already in Caddy's JSON form
    fields: JSONDict = field(default_factory=dict)
    log_credentials: bool = False
    trace: bool = False


_DURATION_TIMEOUTS = {
    "read_body": "read_timeout",
    "read_header": "read_header_timeout",
    "write": "write_timeout",
    "idle": "idle_timeout",
}


def _duration_arg(d: Dispenser, what: str) -> int:
    if not d.next_arg():
        raise d.arg_err()
    try:
        return parse_duration(d.val())
    except DurationError as exc:
        raise d.err(f"parsing {what}: {exc}") from None


def _parse_timeouts(d: Dispenser, opts: ServerOptions) -> None:
    nesting = d.nesting
    while d.next_block(nesting):
        key = d.val()
        if key in _DURATION_TIMEOUTS:
            opts.fields[_DURATION_TIMEOUTS[key]] = _duration_arg(d, f"{key} timeout duration")
        elif key in ("read_body_idle", "write_idle"):
            args = d.remaining_args()
            if not 1 <= len(args) <= 2:
                raise d.arg_err()
            prefix = "read" if key == "read_body_idle" else "write"
            try:
                opts.fields[f"{prefix}_idle_timeout"] = parse_duration(args[0])
            except DurationError as exc:
                raise d.err(f"parsing {key} timeout duration: {exc}") from None
            if len(args) == 2:
                try:
                    opts.fields[f"{prefix}_min_rate"] = int(args[1], 10)
                except ValueError:
                    raise d.err(f"parsing {key} min_rate bytes/second: invalid syntax") from None
        elif key == "write_max_chunk":
            size = d.all_args(1)
            if size is None:
                raise d.arg_err()
            try:
                opts.fields["max_write_chunk"] = parse_bytes(size[0])
            except SizeError as exc:
                raise d.err(f"parsing write_max_chunk: {exc}") from None
        else:
            raise d.err(f"unrecognized timeouts option '{key}'")


def _no_args(d: Dispenser) -> None:
    if d.next_arg():
        raise d.arg_err()


def parse_server_options(d: Dispenser) -> ServerOptions:
    d.next()
    opts = ServerOptions()
    if d.next_arg():
        opts.listener_address = d.val()
        if d.next_arg():
            raise d.arg_err()
    f = opts.fields
    while d.next_block(0):
        key = d.val()
        if key == "name":
            if not opts.listener_address:
                raise d.err("cannot set a name for a server without a listener address")
            if not d.next_arg():
                raise d.arg_err()
            opts.name = d.val()
        elif key == "timeouts":
            _parse_timeouts(d, opts)
        elif key in ("keepalive_interval", "keepalive_idle"):
            what = key.replace("_", " ", 1)
            f[key] = _duration_arg(d, f"{what} duration")
        elif key == "keepalive_count":
            if not d.next_arg():
                raise d.arg_err()
            try:
                f["keepalive_count"] = int(d.val(), 10)
            except ValueError:
                raise d.err("parsing keepalive count int: invalid syntax") from None
        elif key == "max_header_size":
            args = d.all_args(1)
            if args is None:
                raise d.arg_err()
            try:
                f["max_header_bytes"] = parse_bytes(args[0])
            except SizeError as exc:
                raise d.err(f"parsing max_header_size: {exc}") from None
        elif key == "enable_full_duplex":
            _no_args(d)
            f["enable_full_duplex"] = True
        elif key in ("expected_underscore_headers", "expected_dot_headers"):
            args = d.remaining_args()
            if not args:
                raise d.arg_err()
            f[key] = args
        elif key == "log_credentials":
            _no_args(d)
            opts.log_credentials = True
        elif key == "protocols":
            protocols: list[str] = []
            for proto in d.remaining_args():
                if proto not in ("h1", "h2", "h2c", "h3"):
                    raise d.err(f"unknown protocol '{proto}': expected h1, h2, h2c, or h3")
                if proto in protocols:
                    raise d.err(f"protocol {proto} specified more than once")
                protocols.append(proto)
            if d.next_block(d.nesting):
                raise d.arg_err()
            if protocols:
                f["protocols"] = protocols
        elif key == "strict_sni_host":
            if d.next_arg() and d.val() not in ("insecure_off", "on"):
                raise d.err(
                    f"strict_sni_host only supports 'on' or 'insecure_off', got '{d.val()}'"
                )
            f["strict_sni_host"] = d.val() != "insecure_off"
        elif key == "trusted_proxies":
            if not d.next_arg():
                raise d.err(
                    "trusted_proxies expects an IP range source module name as its first argument"
                )
            if d.val() != "static":
                raise d.err(
                    f"trusted_proxies source '{d.val()}' is not supported by pyproxy (only static)"
                )
            ranges: list[str] = []
            while d.next_arg():
                if d.val() == "private_ranges":
                    ranges.extend(PRIVATE_RANGES)
                else:
                    ranges.append(d.val())
            source: JSONDict = {"source": "static"}
            if ranges:
                source["ranges"] = ranges
            f["trusted_proxies"] = source
        elif key == "trusted_proxies_strict":
            _no_args(d)
            f["trusted_proxies_strict"] = 1
        elif key == "trusted_proxies_unix":
            _no_args(d)
            f["trusted_proxies_unix"] = True
        elif key == "client_ip_headers":
            headers: list[str] = []
            for header in d.remaining_args():
                if header in headers:
                    raise d.err(f"client IP header {header} specified more than once")
                headers.append(header)
            if d.next_block(d.nesting):
                raise d.arg_err()
            if headers:
                f["client_ip_headers"] = headers
        elif key == "metrics":
            metrics: JSONDict = {}
            nesting = d.nesting
            while d.next_block(nesting):
                if d.val() != "per_host":
                    raise d.err(f"unrecognized metrics option '{d.val()}'")
                metrics["per_host"] = True
            f["metrics"] = metrics
        elif key == "trace":
            _no_args(d)
            opts.trace = True
        elif key == "0rtt":
            if not d.next_arg():
                raise d.arg_err()
            if d.val() != "off":
                raise d.err(f"unsupported 0rtt argument '{d.val()}' (only 'off' is supported)")
            f["allow_0rtt"] = False
        elif key in ("listener_wrappers", "packet_conn_wrappers"):
            raise d.err(f"servers option '{key}' is not supported by pyproxy")
        else:
            raise d.err(f"unrecognized servers option '{key}'")
    return opts


def sort_and_check(all_opts: list[ServerOptions]) -> None:
    """Longest listener address first; duplicates are an error."""
    all_opts.sort(key=lambda o: -len(o.listener_address))
    seen: set[str] = set()
    for opts in all_opts:
        if opts.listener_address in seen:
            raise ConfigError(
                "cannot have 'servers' global options with duplicate listener addresses: "
                + opts.listener_address
            )
        seen.add(opts.listener_address)


# The server fields a matching `servers` entry overwrites (even with "unset").
_SERVER_FIELDS = (
    "read_timeout",
    "read_header_timeout",
    "read_idle_timeout",
    "read_min_rate",
    "write_timeout",
    "write_idle_timeout",
    "write_min_rate",
    "max_write_chunk",
    "idle_timeout",
    "keepalive_interval",
    "keepalive_idle",
    "keepalive_count",
    "max_header_bytes",
    "enable_full_duplex",
    "expected_underscore_headers",
    "expected_dot_headers",
    "protocols",
    "strict_sni_host",
    "trusted_proxies",
    "client_ip_headers",
    "trusted_proxies_strict",
    "trusted_proxies_unix",
    "metrics",
    "allow_0rtt",
)


def apply_server_options(servers: dict[str, JSONDict], options: dict[str, Any]) -> None:
    """Apply the `servers` entries to the built servers, renaming the named ones."""
    all_opts = options.get("servers")
    if not isinstance(all_opts, list):
        return
    names: set[str] = set()
    for opts in all_opts:
        if not opts.name:
            continue
        if opts.name in names:
            raise ConfigError(
                f"applying global server options: cannot use duplicate server name '{opts.name}'"
            )
        names.add(opts.name)

    renames: dict[str, str] = {}
    for key, server in servers.items():
        listen = server.get("listen", [])
        opts = next(
            (o for o in all_opts if not o.listener_address or o.listener_address in listen),
            None,
        )
        if opts is None:
            continue
        for name in _SERVER_FIELDS:
            if name in opts.fields:
                server[name] = opts.fields[name]
            else:
                server.pop(name, None)
        if opts.log_credentials:
            server.setdefault("logs", {})["should_log_credentials"] = True
        if opts.trace:
            server.setdefault("logs", {})["trace"] = True
        if opts.name:
            renames[key] = opts.name
    for old, new in renames.items():
        servers[new] = servers.pop(old)
