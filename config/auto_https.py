"""Automatic HTTPS planning: Caddy's autohttps.go as a pure function over the Caddy JSON config.

This module owns the decisions Caddy makes in `automaticHTTPSPhase1` before anything listens:

- which HTTP servers terminate TLS (a server listening only on `https_port` gets an empty TLS
  connection policy; so does any server with qualifying host names),
- which host names get managed certificates, and from which issuer (local CA for `localhost`,
  `*.localhost`, `*.local`, `*.internal`, `*.home.arpa`, private IPs, or when the automation policy
  says `internal`; ACME otherwise, with the policy's issuer settings),
- the HTTP->HTTPS redirects (308, `Connection: close`, `Location: https://{host}{uri}`) on the
  HTTP port of *every* address an HTTPS server listens on, expressed as ordinary Caddy JSON routes
  (`static_response`) so the engine serves them with its normal routing.

The input dict is never mutated; `AutoHTTPSPlan.config` is an adjusted deep copy. Nothing here
touches the network, files or the clock.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from config.errors import ConfigError
from config.model import NetworkAddress, parse_network_address
from config.subjects import (
    match_wildcard,
    subject_is_internal,
    subject_is_ip,
    subject_qualifies_for_cert,
    subject_qualifies_for_public_cert,
)

DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443

# Caddy's name for the server it adds when no existing server listens on a redirect address.
REDIRECT_SERVER_NAME = "remaining_auto_https_redirects"

REDIRECT_STATUS = 308  # RFC 9110 §15.4.9: permanent, keeps the method (Caddy uses 308 too)

# Issuer used when neither a matching automation policy nor a catch-all one names issuers.
# (Caddy adds ZeroSSL only when an email is configured; the adapter writes that out explicitly.)
DEFAULT_ACME_ISSUER: Mapping[str, Any] = {"module": "acme"}
INTERNAL_ISSUER: Mapping[str, Any] = {"module": "internal"}


# ---- network addresses ------------------------------------------------------------------------


def format_network_address(addr: NetworkAddress) -> str:
    """Caddy's NetworkAddress.String(): `tcp/` omitted, IPv6 hosts bracketed, ranges `a-b`."""
    if addr.is_unix:
        return f"{addr.network}/{addr.host}"
    port = str(addr.port_start)
    if addr.port_end != addr.port_start:
        port += f"-{addr.port_end}"
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    prefix = "" if addr.network == "tcp" else f"{addr.network}/"
    return f"{prefix}{host}:{port}"


def _listeners_use_port_other_than(listen: Iterable[str], port: int, where: str) -> bool:
    for text in listen:
        try:
            addr = parse_network_address(text, where)
        except ConfigError:
            continue  # Caddy skips unparsable listeners here; they fail later at bind time
        if not addr.port_start <= port <= addr.port_end:
            return True
    return False


def _has_listener_address(listen: Iterable[str], wanted: NetworkAddress, where: str) -> bool:
    """Caddy's Server.hasListenerAddress, including Linux's wildcard-vs-specific bind clash."""
    for text in listen:
        try:
            addr = parse_network_address(text, where)
        except ConfigError:
            continue
        if addr.network != wanted.network:
            continue
        # On Linux, binding 127.0.0.1:80 and :80 in one process clashes, so a server on the
        # wildcard address must take the redirect routes for a specific one (and vice versa).
        same_host = addr.host == wanted.host or addr.host == "" or wanted.host == ""
        if same_host and addr.port_start <= wanted.port_start <= addr.port_end:
            return True
    return False


# ---- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManagedName:
    """One name that gets a managed certificate, and how.

    `issuers` are the issuer JSON objects to try in order (`{"module": "internal"}` for the local
    CA; `{"module": "acme", "ca": …, "email": …}` / `{"module": "zerossl", …}` for ACME).
    `policy_index` is the index in `apps.tls.automation.policies` of the policy that governs the
    name, or None when an implicit (auto-HTTPS) policy does.
    """

    name: str
    internal: bool
    issuers: tuple[Mapping[str, Any], ...]
    policy_index: int | None


@dataclass(frozen=True, slots=True)
class RedirectListener:
    """An HTTP-port address serving redirects, and the server (existing or added) that owns it."""

    address: str
    server: str


@dataclass(frozen=True, slots=True)
class AutoHTTPSPlan:
    """What automatic HTTPS decided. `config` is the adjusted config the engine should run."""

    config: dict[str, Any]
    http_port: int
    https_port: int
    https_servers: tuple[str, ...]
    server_names: Mapping[str, tuple[str, ...]]  # HTTPS server -> its host names (sorted)
    managed: tuple[ManagedName, ...]  # sorted by name
    skipped_loaded: tuple[str, ...]  # names covered by a loaded certificate, so not managed
    redirects: tuple[RedirectListener, ...]
    warnings: tuple[str, ...]

    @property
    def managed_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.managed)

    @property
    def internal_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.managed if m.internal)

    @property
    def acme_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.managed if not m.internal)

    @property
    def acme_challenge_hosts(self) -> tuple[str, ...]:
        """Names whose HTTP-01 challenges may arrive (wildcards cannot use HTTP-01)."""
        return tuple(n for n in self.acme_names if "*" not in n)

    def managed_name(self, name: str) -> ManagedName | None:
        wanted = name.lower()
        return next((m for m in self.managed if m.name.lower() == wanted), None)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _port_option(http_app: Mapping[str, Any], key: str, default: int) -> int:
    value = http_app.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def _replace_env(name: str, env: Mapping[str, str]) -> str:
    # Caddy replaces global placeholders ({env.X}) in host matchers before judging them; other
    # placeholders stay and make the name unqualified for a certificate.
    out = name
    start = out.find("{env.")
    while start >= 0:
        end = out.find("}", start)
        if end < 0:
            break
        value = env.get(out[start + 5 : end], "")
        out = out[:start] + value + out[end + 1 :]
        start = out.find("{env.", start + len(value))
    return out


def _route_hosts(route: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    hosts: list[str] = []
    for matcher_set in _list(route.get("match")):
        for host in _list(_obj(matcher_set).get("host")):
            if isinstance(host, str):
                hosts.append(_replace_env(host, env))
    return hosts


def _has_host_matcher(route: Mapping[str, Any]) -> bool:
    return any("host" in _obj(ms) for ms in _list(route.get("match")))


def _covered_by_loaded(name: str, loaded: frozenset[str]) -> bool:
    lowered = name.lower()
    if lowered in loaded:
        return True
    return any("*" in sans and match_wildcard(lowered, sans) for sans in loaded)


def redirect_location(to_port: int, http_port: int, https_port: int) -> str:
    """The Location template; an explicit port only when it is no standard or configured one.

    Caddy omits `https_port` too: that setting describes the internal port (behind a port
    forward), not the one clients use.
    """
    # Not Caddy's {http.request.host}: that drops the brackets of an IPv6 literal host.
    location = "https://{pyproxy.request.url_host}"
    if to_port not in (http_port, https_port, DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT):
        location += f":{to_port}"
    return location + "{http.request.uri}"


def redirect_route(location: str, hosts: Iterable[str] = ()) -> dict[str, Any]:
    """A Caddy JSON route answering 308 to `location` over plain HTTP (optionally per host)."""
    matcher: dict[str, Any] = {"protocol": "http"}
    host_list = list(hosts)
    if host_list:
        matcher["host"] = host_list
    return {
        "match": [matcher],
        "handle": [
            {
                "handler": "static_response",
                "status_code": REDIRECT_STATUS,
                "headers": {"Location": [location]},
                "close": True,
            }
        ],
    }


def _redirect_sort_key(route: Mapping[str, Any]) -> tuple[int, int, int, str]:
    # Caddy sorts redirect routes: exact names before wildcards, longer before shorter, and the
    # host-less catch-all last, so the most specific Location wins.
    hosts = _list(_obj(_list(route.get("match"))[0]).get("host"))
    first = hosts[0] if hosts else ""
    if not first:
        return (1, 0, 0, "")
    return (0, 1 if "*" in first else 0, -len(first), first)


def _record_redirect_address(
    redirect_addrs: dict[str, list[NetworkAddress]],
    name: str,
    addr: NetworkAddress,
    https_port: int,
) -> None:
    # Keep every bind address of one port (Caddy 2.6.2 kept only one, issue #3443), but do not
    # mix in a second HTTPS port when the canonical https_port is also listened on.
    existing = redirect_addrs.get(name)
    if not existing:
        redirect_addrs[name] = [addr]
        return
    port = existing[0].port_start
    if addr.port_start != port:
        if addr.port_start == https_port and port != https_port:
            redirect_addrs[name] = [addr]
        return
    if addr not in existing:
        existing.append(addr)


def _policy_subjects(policy: Mapping[str, Any]) -> list[str]:
    return [s for s in _list(policy.get("subjects")) if isinstance(s, str)]


def _resolve_issuers(
    name: str, policies: list[dict[str, Any]], no_explicit_policies: bool
) -> ManagedName:
    """Pick the automation policy and issuers for one name, as Caddy would at management time."""
    for index, policy in enumerate(policies):
        subjects = _policy_subjects(policy)
        if subjects and any(match_wildcard(name, s) for s in subjects):
            issuers = [_obj(i) for i in _list(policy.get("issuers"))]
            if not issuers:
                # A policy of only internal names without issuers would fall back to public CAs,
                # which cannot issue for them; Caddy gives it the internal issuer instead.
                all_internal = all(subject_is_internal(s) for s in subjects)
                issuers = [dict(INTERNAL_ISSUER) if all_internal else dict(DEFAULT_ACME_ISSUER)]
            internal = all(i.get("module") == "internal" for i in issuers)
            return ManagedName(name, internal, tuple(issuers), index)
    # Caddy's default issuers do not issue for IPs, so with no explicit policies at all every IP
    # goes to the local CA; with policies, a public IP follows the catch-all policy.
    use_internal = not subject_qualifies_for_public_cert(name) or (
        subject_is_ip(name) and no_explicit_policies
    )
    if use_internal:
        return ManagedName(name, True, (dict(INTERNAL_ISSUER),), None)
    for index, policy in enumerate(policies):
        if not _policy_subjects(policy):
            issuers = [_obj(i) for i in _list(policy.get("issuers"))] or [dict(DEFAULT_ACME_ISSUER)]
            internal = all(i.get("module") == "internal" for i in issuers)
            return ManagedName(name, internal, tuple(issuers), index)
    return ManagedName(name, False, (dict(DEFAULT_ACME_ISSUER),), None)


def plan_automatic_https(
    config: Mapping[str, Any],
    *,
    loaded_names: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> AutoHTTPSPlan:
    """Plan automatic HTTPS for a Caddy JSON config (the dict `pyproxy adapt` prints).

    `loaded_names` are the SANs of certificates loaded manually (`tls cert key`, `load_files`,
    `load_pem`); names they cover are not managed unless the server sets
    `ignore_loaded_certificates`. `env` resolves `{env.X}` in host matchers.
    Raises ConfigError for an unparsable listen address on an HTTPS server.
    """
    cfg: dict[str, Any] = copy.deepcopy(dict(config))
    apps = _obj(cfg.get("apps"))
    http_app = _obj(apps.get("http"))
    tls_app = _obj(apps.get("tls"))
    servers = _obj(http_app.get("servers"))
    http_port = _port_option(http_app, "http_port", DEFAULT_HTTP_PORT)
    https_port = _port_option(http_app, "https_port", DEFAULT_HTTPS_PORT)
    environ = env or {}
    loaded = frozenset(n.lower() for n in loaded_names)
    warnings: list[str] = []

    cert_names: set[str] = set()
    skipped_loaded: set[str] = set()
    redirect_addrs: dict[str, list[NetworkAddress]] = {}
    server_names: dict[str, tuple[str, ...]] = {}

    # Sorted like Caddy, so which server receives the redirect routes is deterministic.
    for srv_name in sorted(servers):
        srv = _obj(servers[srv_name])
        where = f"apps.http.servers.{srv_name}"
        auto = _obj(srv.get("automatic_https"))
        listen = [a for a in _list(srv.get("listen")) if isinstance(a, str)]
        if auto.get("disable"):
            continue
        if not _listeners_use_port_other_than(listen, http_port, where):
            # Listening only on the HTTP port: plain HTTP on purpose (e.g. `http://` sites).
            continue
        policies = srv.get("tls_connection_policies")
        if policies is None and not _listeners_use_port_other_than(listen, https_port, where):
            srv["tls_connection_policies"] = policies = [{}]

        skip = {s for s in _list(auto.get("skip")) if isinstance(s, str)}
        names: set[str] = set()
        for route in _list(srv.get("routes")):
            names.update(h for h in _route_hosts(_obj(route), environ) if h not in skip)
        if not names and not policies:
            continue
        server_names[srv_name] = tuple(sorted(names))

        if auto.get("disable_certificates"):
            warnings.append(f"{srv_name}: automated certificate management is disabled")
        else:
            skip_certs = {s for s in _list(auto.get("skip_certificates")) if isinstance(s, str)}
            for name in names:
                if not subject_qualifies_for_cert(name) or name in skip_certs:
                    continue
                if not auto.get("ignore_loaded_certificates") and _covered_by_loaded(name, loaded):
                    skipped_loaded.add(name)
                    continue
                if "*" in name and name.strip(".").count(".") == 1:
                    warnings.append(
                        f"{name}: most clients do not trust second-level wildcard certificates"
                    )
                cert_names.add(name)

        if srv.get("tls_connection_policies") is None:
            srv["tls_connection_policies"] = [{}]

        if auto.get("disable_redirects"):
            continue
        for text in listen:
            try:
                addr = parse_network_address(text, f"{where}.listen")
            except ConfigError as exc:
                if text.count(":") > 1:
                    raise ConfigError(
                        f"{exc}; there are too many colons, so the port is ambiguous. "
                        "Did you mean to wrap the IPv6 address with [] brackets?"
                    ) from exc
                raise
            # An HTTPS server without names still redirects everything (catch-all, "").
            for name in names or {""}:
                _record_redirect_address(redirect_addrs, name, addr, https_port)

    # Names listed in `apps.tls.certificates.automate` are managed whatever the HTTP app says.
    for name in _list(_obj(tls_app.get("certificates")).get("automate")):
        if isinstance(name, str) and subject_qualifies_for_cert(name):
            cert_names.add(name)

    policies_list = [_obj(p) for p in _list(_obj(tls_app.get("automation")).get("policies"))]
    managed = tuple(
        _resolve_issuers(name, policies_list, not policies_list)
        for name in sorted(cert_names, key=str.lower)
    )

    redirects = _add_redirects(
        servers,
        redirect_addrs,
        http_port=http_port,
        https_port=https_port,
        have_cert_names=bool(cert_names),
    )
    https_servers = tuple(
        sorted(
            name
            for name, srv in servers.items()
            if _obj(srv).get("tls_connection_policies") is not None
        )
    )
    return AutoHTTPSPlan(
        config=cfg,
        http_port=http_port,
        https_port=https_port,
        https_servers=https_servers,
        server_names=server_names,
        managed=managed,
        skipped_loaded=tuple(sorted(skipped_loaded)),
        redirects=redirects,
        warnings=tuple(warnings),
    )


def _add_redirects(
    servers: dict[str, Any],
    redirect_addrs: dict[str, list[NetworkAddress]],
    *,
    http_port: int,
    https_port: int,
    have_cert_names: bool,
) -> tuple[RedirectListener, ...]:
    """Insert redirect routes into servers already on the HTTP address, or add one server."""
    names_by_addr: dict[NetworkAddress, list[str]] = {}
    for name, addrs in redirect_addrs.items():
        for addr in addrs:
            names_by_addr.setdefault(addr, []).append(name)

    routes_by_http_addr: dict[str, list[dict[str, Any]]] = {}
    http_addr_objs: dict[str, NetworkAddress] = {}
    for addr, names in names_by_addr.items():
        hosts = [] if names == [""] else sorted(n for n in names if n)
        route = redirect_route(redirect_location(addr.port_start, http_port, https_port), hosts)
        http_addr = NetworkAddress(addr.network, addr.host, http_port, http_port)
        key = format_network_address(http_addr)
        http_addr_objs[key] = http_addr
        routes_by_http_addr.setdefault(key, []).append(route)

    catch_all_location = redirect_location(https_port, http_port, https_port)
    leftover_addrs: list[str] = []
    leftover_routes: list[dict[str, Any]] = []
    result: list[RedirectListener] = []
    existing_names = sorted(servers)
    for key in sorted(routes_by_http_addr):
        routes = sorted(routes_by_http_addr[key], key=_redirect_sort_key)
        owner = next(
            (
                n
                for n in existing_names
                if _has_listener_address(
                    [a for a in _list(_obj(servers[n]).get("listen")) if isinstance(a, str)],
                    http_addr_objs[key],
                    f"apps.http.servers.{n}",
                )
            ),
            None,
        )
        if owner is None:
            leftover_addrs.append(key)
            leftover_routes.extend(routes)
            result.append(RedirectListener(key, REDIRECT_SERVER_NAME))
            continue
        srv = servers[owner]
        srv_routes = _list(srv.get("routes"))
        # After the user's last host-matched route, before their catch-all (caddy#3212); with no
        # certificate names at all the user's own routes take precedence (caddy#4829).
        insert_at = len(srv_routes)
        for i, r in enumerate(srv_routes):
            if _has_host_matcher(_obj(r)):
                insert_at = i + 1
        # Several redirect addresses can land on one wildcard-bound server; Caddy then repeats
        # identical routes, which change nothing, so each is added once.
        new_routes = [r for r in routes if r not in srv_routes] if have_cert_names else []
        srv_routes = srv_routes[:insert_at] + new_routes + srv_routes[insert_at:]
        catch_all = redirect_route(catch_all_location)
        if catch_all not in srv_routes:
            srv_routes.append(catch_all)
        srv["routes"] = srv_routes
        result.append(RedirectListener(key, owner))

    if leftover_addrs:
        servers[REDIRECT_SERVER_NAME] = {
            "listen": leftover_addrs,
            "routes": [*leftover_routes, redirect_route(catch_all_location)],
        }
    return tuple(result)
