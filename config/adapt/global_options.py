"""The global options block: one parser per option (Caddy's httpcaddyfile/options.go).

Each parser receives a Dispenser over the option's tokens and the option's previous
value, and returns the value stored in `options[name]`; the HTTP/TLS/logging builders
read them later. Durations are stored as integer nanoseconds, Caddy's JSON form.

Real Caddy options that pyproxy does not implement are registered too, so they fail with
a clear message naming them instead of "unrecognized global option".
"""

from __future__ import annotations

from typing import Any

from config.adapt.addresses import BindValue
from config.adapt.builtins import UNSUPPORTED_DIRECTIVES
from config.adapt.directive_order import current_order, reorder
from config.adapt.helper import DIRECTIVES, ConfigValue, JSONDict, register_global_option
from config.adapt.logging_config import parse_global_log
from config.adapt.server_options import parse_server_options
from config.adapt.tls_app import parse_issuer_module, parse_preferred_chains
from config.caddyfile.dispenser import Dispenser
from config.errors import ConfigError
from config.go_values import DurationError, parse_duration

DEFAULT_ADMIN_LISTEN = "localhost:2019"

# -- small shared shapes ------------------------------------------------------------------------


def _single_string(d: Dispenser, _existing: Any) -> Any:
    d.next()
    if not d.next():
        raise d.arg_err()
    value = d.val()
    if d.next():
        raise d.arg_err()
    return value


def _true(d: Dispenser, _existing: Any) -> Any:
    return True


def _duration(d: Dispenser, _existing: Any) -> Any:
    if not d.next() or not d.next():
        raise d.arg_err()
    try:
        return parse_duration(d.val())
    except DurationError as exc:
        # Caddy's parseOptDuration returns the bare error; the location is ours (file:line).
        raise d.wrap_err(exc) from None


def _port(d: Dispenser, _existing: Any) -> Any:
    d.next()
    args = d.all_args(1)
    if args is None:
        raise d.arg_err()
    try:
        return int(args[0], 10)
    except ValueError:
        raise d.err(
            f"converting port '{args[0]}' to integer value: strconv.Atoi: "
            f'parsing "{args[0]}": invalid syntax'
        ) from None


def _order(d: Dispenser, existing: Any) -> Any:
    d.next()
    if not d.next():
        raise d.arg_err()
    name = d.val()
    if name not in DIRECTIVES:
        if name in UNSUPPORTED_DIRECTIVES:
            raise d.err(f"directive '{name}' is not supported by pyproxy")
        raise d.err(f"{name} is not a registered directive")
    if not d.next():
        raise d.arg_err()
    position = d.val()
    order = existing if isinstance(existing, list) else current_order({})
    if position in ("first", "last"):
        if d.next_arg():
            raise d.arg_err()
        return reorder(order, name, position, None)
    if position not in ("before", "after"):
        raise d.err(f"unknown positional '{position}'")
    if not d.next_arg():
        raise d.arg_err()
    other = d.val()
    if d.next_arg():
        raise d.arg_err()
    if other not in [x for x in order if x != name]:
        raise d.err(f"directive '{other}' not found")
    return reorder(order, name, position, other)


def _storage(d: Dispenser, _existing: Any) -> Any:
    if not d.next() or not d.next():
        raise d.arg_err()
    module = d.val()
    if module == "redis":
        return _storage_redis(d)
    if module != "file_system":
        raise d.err(
            f"storage module '{module}' is not supported by pyproxy (only file_system, redis)"
        )
    storage: JSONDict = {"module": "file_system"}
    if d.next_arg():
        storage["root"] = d.val()
        if d.next_arg():
            raise d.arg_err()
    while d.next_block(0):
        if d.val() != "root":
            raise d.err(f"unrecognized parameter '{d.val()}'")
        if "root" in storage:
            raise d.err("storage root already set")
        if not d.next_arg():
            raise d.arg_err()
        storage["root"] = d.val()
        if d.next_arg():
            raise d.arg_err()
    if "root" not in storage:
        raise d.err("missing storage root path")
    return storage


# Go's strconv.ParseBool, which caddy-storage-redis uses for its boolean options.
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _go_parse_bool(text: str) -> bool | None:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    return None


def _storage_redis(d: Dispenser) -> JSONDict:
    """`storage redis [cluster|failover] { ... }`: caddy-storage-redis's UnmarshalCaddyfile.

    The JSON is the module's whole config struct (Caddy marshals every field, defaults from its
    New()), so `pyproxy adapt` prints what `caddy adapt` with the module prints. Whether pyproxy
    can honour it (one standalone server) is decided when the config loads, naming the JSON path.
    """
    storage: JSONDict = {
        "client_type": "simple",
        "address": None,
        "host": ["127.0.0.1"],
        "port": ["6379"],
        "db": "0",
        "timeout": "",
        "username": "",
        "password": "",
        "sentinel_password": "",
        "master_name": "",
        "key_prefix": "caddy",
        "encryption_key": "",
        "compression": "",
        "tls_enabled": False,
        "tls_insecure": False,
        "tls_server_certs_pem": "",
        "tls_server_certs_path": "",
        "route_by_latency": False,
        "route_randomly": False,
    }
    if d.next_arg():
        if d.val() not in ("cluster", "failover"):
            raise d.arg_err()
        storage["client_type"] = d.val()
    nesting = d.nesting
    while d.next_block(nesting):
        name = d.val()
        values: list[str] = []
        if d.next_arg():
            values.append(d.val())  # one value on the line
        else:
            inner = d.nesting
            while d.next_block(inner):  # or a block of values, one token each
                values.append(d.val())
        if not values:
            # The module's message, spelling included.
            raise d.err(f"no value supplied for configuraton key '{name}'")
        first = values[0]
        if name in ("address", "host", "port"):
            storage[name] = values
        elif name in ("db", "timeout", "encryption_key"):
            storage[name] = first
        elif name == "aes_key":  # the old gamalan/caddy-tlsredis name
            storage["encryption_key"] = first
        elif name in (
            "username",
            "password",
            "sentinel_password",
            "master_name",
            "key_prefix",
            "tls_server_certs_pem",
            "tls_server_certs_path",
        ):
            if first:
                storage[name] = first
        elif name == "compression":
            flag = _go_parse_bool(first)
            if flag is not None:
                storage[name] = "flate" if flag else ""
            elif first in ("flate", "zlib"):
                storage[name] = first
            else:
                raise d.err(
                    f"invalid value for 'compression': {first} "
                    "(expected 'true', 'flate', 'zlib', or 'false')"
                )
        elif name in ("tls_enabled", "tls_insecure", "route_by_latency", "route_randomly"):
            flag = _go_parse_bool(first)
            if flag is None:
                raise d.err(f"invalid boolean value for '{name}': {first}")
            storage[name] = flag
        else:
            raise d.err(f"unknown configuration key: {name}")
    storage["module"] = "redis"
    return storage


def _storage_check(d: Dispenser, _existing: Any) -> Any:
    value = _single_string(d, None)
    if value != "off":
        raise d.err("storage_check must be 'off'")
    return value


def _storage_clean_interval(d: Dispenser, _existing: Any) -> Any:
    value = _single_string(d, None)
    if value == "off":
        return False
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise d.err(
            f"failed to parse storage_clean_interval, must be a duration or 'off' {exc}"
        ) from None


def _acme_eab(d: Dispenser, _existing: Any) -> Any:
    d.next()
    if d.next_arg():
        raise d.arg_err()
    eab: JSONDict = {}
    while d.next_block(0):
        key = d.val()
        if key not in ("key_id", "mac_key"):
            raise d.err(f"unrecognized parameter '{key}'")
        if not d.next_arg():
            raise d.arg_err()
        eab[key] = d.val()
    return eab


def _cert_issuer(d: Dispenser, existing: Any) -> Any:
    d.next()
    issuers: list[JSONDict] = list(existing) if isinstance(existing, list) else []
    if not d.next():
        raise d.arg_err()
    issuers.append(parse_issuer_module(d))
    return issuers


def _default_bind(d: Dispenser, _existing: Any) -> Any:
    d.next()
    addresses = d.remaining_args() or [""]
    protocols: list[str] = []
    while d.next_block(0):
        if d.val() != "protocols":
            raise d.err(f"unknown subdirective: {d.val()}")
        protocols = d.remaining_args()
        if not protocols:
            raise d.err("protocols requires one or more arguments")
    return [ConfigValue("bind", BindValue(tuple(addresses), tuple(protocols)))]


def _admin(d: Dispenser, _existing: Any) -> Any:
    d.next()
    admin: JSONDict = {}
    if d.next_arg():
        listen = d.val()
        if listen == "off":
            admin["disabled"] = True
            if d.next():
                raise d.err("No more option is allowed after turning off admin config")
        else:
            admin["listen"] = listen
            if d.next_arg():
                raise d.arg_err()
    while d.next_block(0):
        key = d.val()
        if key == "enforce_origin":
            admin["enforce_origin"] = True
        elif key == "origins":
            origins = d.remaining_args()
            if origins:
                admin["origins"] = origins
            else:
                admin.pop("origins", None)
        else:
            raise d.err(f"unrecognized parameter '{key}'")
    if not admin.get("listen") and not admin.get("disabled"):
        admin["listen"] = DEFAULT_ADMIN_LISTEN
    return admin


def _on_demand_tls(d: Dispenser, _existing: Any) -> Any:
    d.next()
    if d.next_arg():
        raise d.arg_err()
    on_demand: JSONDict | None = None
    nesting = d.nesting
    while d.next_block(nesting):
        key = d.val()
        if key == "ask":
            if not d.next_arg():
                raise d.arg_err()
            on_demand = on_demand or {}
            if "permission" in on_demand:
                raise d.err("on-demand TLS permission module (or 'ask') already specified")
            on_demand["permission"] = {"endpoint": d.val(), "module": "http"}
        elif key == "permission":
            if not d.next_arg():
                raise d.arg_err()
            if d.val() != "http":
                raise d.err(f"on-demand TLS permission module '{d.val()}' is not supported")
            on_demand = on_demand or {}
            if "permission" in on_demand:
                raise d.err("on-demand TLS permission module (or 'ask') already specified")
            permission: JSONDict = {"module": "http"}
            while d.next_block(d.nesting):
                if d.val() != "endpoint" or not d.next_arg():
                    raise d.err(f"unrecognized subdirective '{d.val()}'")
                permission["endpoint"] = d.val()
            on_demand["permission"] = permission
        elif key in ("interval", "burst"):
            raise d.err(
                f"the on_demand_tls '{key}' option is no longer supported, remove it from "
                "your config"
            )
        else:
            raise d.err(f"unrecognized parameter '{key}'")
    if on_demand is None:
        raise d.err("expected at least one config parameter for on_demand_tls")
    return on_demand


def _persist_config(d: Dispenser, _existing: Any) -> Any:
    value = _single_string(d, None)
    if value != "off":
        raise d.err("persist_config must be 'off'")
    return value


AUTO_HTTPS_VALUES = ("off", "disable_redirects", "disable_certs", "ignore_loaded_certs")


def _auto_https(d: Dispenser, _existing: Any) -> Any:
    d.next()
    values = d.remaining_args()
    if not values:
        raise d.arg_err()
    for value in values:
        if value not in AUTO_HTTPS_VALUES:
            raise d.err(
                "auto_https must be one of 'off', 'disable_redirects', 'disable_certs', or "
                "'ignore_loaded_certs'"
            )
    return values


def _metrics(d: Dispenser, _existing: Any) -> Any:
    d.next()
    metrics: JSONDict = {}
    while d.next_block(0):
        key = d.val()
        if key not in ("per_host", "observe_catchall_hosts", "otlp"):
            raise d.err(f"unrecognized servers option '{key}'")
        metrics[key] = True
    return metrics


def _ocsp_stapling(d: Dispenser, _existing: Any) -> Any:
    d.next()
    args = d.all_args(1)
    if args is None:
        raise d.arg_err()
    if args[0] != "off":
        raise d.err(f"invalid argument '{args[0]}'")
    return {"disable_stapling": True}


def _preferred_chains(d: Dispenser, _existing: Any) -> Any:
    d.next()
    return parse_preferred_chains(d)


def _renewal_window_ratio(d: Dispenser, _existing: Any) -> Any:
    d.next()
    if not d.next():
        raise d.arg_err()
    text = d.val()
    try:
        ratio = float(text)
    except ValueError:
        raise d.err(
            f'parsing renewal_window_ratio: strconv.ParseFloat: parsing "{text}": invalid syntax'
        ) from None
    if ratio <= 0 or ratio >= 1:
        raise d.err("renewal_window_ratio must be between 0 and 1 (exclusive)")
    if d.next():
        raise d.arg_err()
    return ratio


def _tls_resolvers(d: Dispenser, _existing: Any) -> Any:
    d.next()
    resolvers = d.remaining_args()
    if not resolvers:
        raise d.arg_err()
    return resolvers


def _servers(d: Dispenser, _existing: Any) -> Any:
    return parse_server_options(d)


def _log(d: Dispenser, existing: Any) -> Any:
    return parse_global_log(d, existing)


def _unsupported(name: str) -> Any:
    def parse(d: Dispenser, _existing: Any) -> Any:
        d.next()
        raise ConfigError(
            f"{d.file()}:{d.line()}: global option '{name}' is not supported by pyproxy",
            d.file(),
            d.line(),
        )

    return parse


def register() -> None:
    for name, parser in (
        ("debug", _true),
        ("http_port", _port),
        ("https_port", _port),
        ("default_bind", _default_bind),
        ("grace_period", _duration),
        ("shutdown_delay", _duration),
        ("default_sni", _single_string),
        ("fallback_sni", _single_string),
        ("order", _order),
        ("storage", _storage),
        ("storage_check", _storage_check),
        ("storage_clean_interval", _storage_clean_interval),
        ("renew_interval", _duration),
        ("ocsp_interval", _duration),
        ("acme_ca", _single_string),
        ("acme_ca_root", _single_string),
        ("acme_eab", _acme_eab),
        ("cert_issuer", _cert_issuer),
        ("skip_install_trust", _true),
        ("email", _single_string),
        ("admin", _admin),
        ("on_demand_tls", _on_demand_tls),
        ("local_certs", _true),
        ("key_type", _single_string),
        ("auto_https", _auto_https),
        ("metrics", _metrics),
        ("servers", _servers),
        ("ocsp_stapling", _ocsp_stapling),
        ("cert_lifetime", _duration),
        ("log", _log),
        ("preferred_chains", _preferred_chains),
        ("persist_config", _persist_config),
        ("tls_resolvers", _tls_resolvers),
        ("renewal_window_ratio", _renewal_window_ratio),
    ):
        register_global_option(name, parser)
    # real Caddy options that need modules pyproxy does not have (DNS providers, ECH,
    # plugins): rejected by name rather than half-supported
    for name in ("acme_dns", "dns", "ech", "filesystem", "pki", "events"):
        register_global_option(name, _unsupported(name))


register()
