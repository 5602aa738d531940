"""Server blocks → the whole Caddy JSON config (Caddy's httpcaddyfile/httptype.go `Setup`).

The flow: evaluate the global options block; parse every directive of every site block
into a "pile" of config values; map each site address to its listener addresses; group
blocks served on the same listeners into servers (`srv0`, `srv1`, ...); inside a server,
sort sites by specificity and wrap each one's routes in a host-matched `subroute`; then
derive the `tls` app, the `logging` config and the top-level `admin`/`storage` keys.
"""

from __future__ import annotations

from typing import Any

from config.adapt.addresses import (
    Address,
    Pairing,
    SiteBlock,
    consolidate_listeners,
    http_ports,
    listeners_use_any_port_other_than,
    map_blocks_to_listeners,
    specificity,
    split_host_port,
)
from config.adapt.builtins import UNSUPPORTED_DIRECTIVES
from config.adapt.directive_order import (
    build_subroute,
    consolidate_routes,
    current_order,
    define_matchers,
    go_stable_sort,
    normalize_directive_name,
    subroute_handler,
)
from config.adapt.helper import (
    DIRECTIVES,
    GLOBAL_OPTIONS,
    GroupCounter,
    Helper,
    JSONDict,
    MatcherSet,
    Warning,
)
from config.adapt.logging_config import NamedCustomLog, build_logging
from config.adapt.server_options import apply_server_options, sort_and_check
from config.adapt.shorthands import expand_segment
from config.adapt.tls_app import (
    build_pki_app,
    build_tls_app,
    consolidate_conn_policies,
    policy_settings_empty,
)
from config.caddyfile.dispenser import Dispenser
from config.caddyfile.parser import ServerBlock
from config.errors import ConfigError


def _known_directive(name: str) -> bool:
    return name in DIRECTIVES or name in UNSUPPORTED_DIRECTIVES


def _evaluate_global_options(blocks: list[ServerBlock], options: dict[str, Any]) -> None:
    for segment in blocks[0].segments:
        name = segment[0].text
        parser = GLOBAL_OPTIONS.get(name)
        if parser is None:
            tok = segment[0]
            raise ConfigError(
                f"{tok.file}:{tok.line}: unrecognized global option: {name}", tok.file, tok.line
            )
        try:
            value = parser(Dispenser(segment), options.get(name))
        except ConfigError as exc:
            raise ConfigError(
                f"parsing caddyfile tokens for '{name}': {exc.message}", exc.file, exc.line
            ) from None
        if name == "servers":
            options.setdefault("servers", []).append(value)
        elif name == "default_bind":
            options.setdefault("default_bind", []).extend(value)
        else:
            # `log` parsers return the accumulated list themselves
            options[name] = value
    if "servers" in options:
        sort_and_check(options["servers"])


def _parse_site_block(
    block: SiteBlock,
    options: dict[str, Any],
    warnings: list[Warning],
    group_counter: GroupCounter,
    state: dict[str, Any],
) -> None:
    matcher_defs: dict[str, MatcherSet] = {}
    for segment in block.segments:
        if segment[0].text.startswith("@"):
            define_matchers(Dispenser(segment), matcher_defs)

    for segment in block.segments:
        name = segment[0].text
        if name.startswith("@"):
            continue
        parser = DIRECTIVES.get(name)
        if parser is None:
            tok = segment[0]
            if name in UNSUPPORTED_DIRECTIVES:
                raise ConfigError(
                    f"{tok.file}:{tok.line}: directive '{name}' is not supported by pyproxy",
                    tok.file,
                    tok.line,
                )
            message = f"{tok.file}:{tok.line}: unrecognized directive: {name}"
            if not block.has_braces:
                message += (
                    "\nDid you mean to define a second site? If so, you must use curly braces "
                    "around each site to separate their configurations."
                )
            raise ConfigError(message, tok.file, tok.line)
        h = Helper(
            dispenser=Dispenser(segment),
            options=options,
            warnings=warnings,
            matcher_defs=matcher_defs,
            parent_block_tokens=block.segments,
            group_counter=group_counter,
            state=state,
            block_state=state,
        )
        try:
            values = parser(h)
        except ConfigError as exc:
            raise ConfigError(
                f"parsing caddyfile tokens for '{name}': {exc.message}", exc.file, exc.line
            ) from None
        directive = normalize_directive_name(name)
        for value in values:
            value.directive = directive
            block.pile.setdefault(value.cls, []).append(value)


def _site_sort_less(a: SiteBlock, b: SiteBlock) -> bool:
    """Most specific site first: longer host, then longer path; catch-alls last."""

    def summary(sb: SiteBlock) -> tuple[str, str, bool]:
        longest_host = longest_path = ""
        wildcard = False
        for addr in sb.parsed_keys:
            if "*" in addr.host or not addr.host:
                wildcard = True
            if specificity(addr.host) > specificity(longest_host):
                longest_host = addr.host
            if specificity(addr.path) > specificity(longest_path):
                longest_path = addr.path
        return longest_host, longest_path, wildcard

    a_host, a_path, a_wild = summary(a)
    b_host, b_path, b_wild = summary(b)
    if specificity(a_host) == 0:
        return False
    if specificity(b_host) == 0:
        return True
    if a_wild != b_wild:
        return b_wild and not a_wild
    if specificity(a_host) == specificity(b_host):
        return len(a_path) > len(b_path)
    return specificity(a_host) > specificity(b_host)


def _compile_matcher_sets(block: SiteBlock) -> list[MatcherSet]:
    """The host (and deprecated path) matchers a site's keys stand for."""
    pairs: list[tuple[list[str], list[str]]] = []  # (hosts, paths)
    catch_all = False
    for addr in block.parsed_keys:
        chosen = None
        for pair in pairs:
            paths = pair[1]
            if (not paths and not addr.path) or (len(paths) == 1 and paths[0] == addr.path):
                chosen = pair
                break
        if chosen is None:
            chosen = ([], [addr.path] if addr.path else [])
            pairs.append(chosen)
        if not addr.host and not catch_all:
            chosen[0].clear()
            catch_all = True
        if catch_all:
            continue
        if addr.host and addr.host not in chosen[0]:
            chosen[0].append(addr.host)
    sets: list[MatcherSet] = []
    for hosts, paths in pairs:
        ms: MatcherSet = {}
        if hosts:
            ms["host"] = list(hosts)
        if paths:
            ms["path"] = list(paths)
        if ms:
            sets.append(ms)
    return sets


def _append_site_routes(
    route_list: list[JSONDict],
    routes: list[JSONDict],
    matcher_sets: list[MatcherSet],
    pairing: Pairing,
) -> list[JSONDict]:
    """Add a site's routes to its server, wrapped in a terminal host-matched subroute."""
    if not matcher_sets and not routes:
        return route_list
    wrap = True
    if not matcher_sets and len(pairing.blocks) == 1:
        # a lone catch-all site needs no wrapper, unless a host matcher inside would
        # otherwise end up at the top level (and drive automatic HTTPS; caddy#5124)
        wrap = any("host" in ms for r in routes for ms in r.get("match") or [])
    if not wrap:
        return route_list + routes
    route: JSONDict = {}
    if matcher_sets:
        route["match"] = matcher_sets
    if routes:
        route["handle"] = [subroute_handler(routes)]
    route["terminal"] = True
    return [*route_list, route]


def _conflicting_schemes(
    server: JSONDict, blocks: list[SiteBlock], options: dict[str, Any]
) -> None:
    """A server cannot (natively) serve both HTTP and HTTPS."""
    http_port, https_port = http_ports(options)
    listen = "[" + " ".join(server.get("listen", [])) + "]"
    has_policies = bool(server.get("tls_connection_policies"))
    kind = ""

    def set_http(addr: Address) -> None:
        nonlocal kind
        if kind == "HTTPS":
            msg = (
                f"server listening on {listen} is configured for HTTPS and cannot natively "
                f"multiplex HTTP and HTTPS: {addr.original}"
            )
            if not addr.scheme and not addr.host:
                msg += " (try specifying https:// in the address)"
            raise ConfigError(msg)
        if has_policies:
            raise ConfigError(
                f"server listening on {listen} is HTTP, but attempts to configure TLS "
                "connection policies"
            )
        kind = "HTTP"

    def set_https(addr: Address) -> None:
        nonlocal kind
        if kind == "HTTP":
            raise ConfigError(
                f"server listening on {listen} is configured for HTTP and cannot natively "
                f"multiplex HTTP and HTTPS: {addr.original}"
            )
        kind = "HTTPS"

    for block in blocks:
        for addr in block.parsed_keys:
            if addr.scheme == "http" or addr.port == http_port:
                set_http(addr)
            elif addr.scheme == "https" or addr.port == https_port or has_policies:
                set_https(addr)
            elif not addr.host:
                set_http(addr)


def _servers_from_pairings(
    pairings: list[Pairing],
    options: dict[str, Any],
    warnings: list[Warning],
    group_counter: GroupCounter,
) -> dict[str, JSONDict]:
    servers: dict[str, JSONDict] = {}
    default_sni = options.get("default_sni") or ""
    fallback_sni = options.get("fallback_sni") or ""
    http_port, https_port = http_ports(options)
    auto_https: list[str] = options.get("auto_https") or []
    order = current_order(options)

    for index, p in enumerate(pairings):
        # same host on the same listener twice: the sites would be merged (caddy#4635)
        blocks_with_key: dict[str, set[int]] = {}
        for j, block in enumerate(p.blocks):
            for key in block.keys:
                blocks_with_key.setdefault(key.text, set()).add(j)
        for block in p.blocks:
            for key in block.keys:
                if len(blocks_with_key[key.text]) > 1:
                    raise ConfigError(f"ambiguous site definition: {key.text}")

        server: JSONDict = {"listen": [addr for addr, _ in p.addresses]}
        protocols = [prots if any(prots) else None for _, prots in p.addresses]
        if any(x is not None for x in protocols):
            server["listen_protocols"] = protocols

        auto: JSONDict | None = None
        for value in auto_https:
            auto = auto if auto is not None else {}
            flag = {
                "off": "disable",
                "disable_redirects": "disable_redirects",
                "disable_certs": "disable_certificates",
                "ignore_loaded_certs": "ignore_loaded_certificates",
            }.get(value)
            if flag:
                auto[flag] = True

        go_stable_sort(p.blocks, _site_sort_less)

        policies: list[JSONDict] = []
        has_catch_all_policy = False
        qualifies_for_tls = False
        auto_will_add_policy = auto is None or not auto.get("disable")

        logs: JSONDict | None = None
        if any(sb.pile.get("custom_log") for sb in p.blocks):
            logs = {}

        for sb in p.blocks:
            matcher_sets = _compile_matcher_sets(sb)
            hosts = sb.hosts_from_keys(False)
            forced = "tls.force_automate" in sb.pile

            for cp_value in sb.pile.get("tls.connection_policy", []):
                # the pile's policy itself, as in Caddy (a block served on several
                # listeners shares it), so output matches even in those corner cases
                cp: JSONDict = cp_value.value
                for host in hosts:
                    if host == default_sni:
                        hosts = [*hosts, ""]
                        cp["default_sni"] = default_sni
                        break
                    if host == fallback_sni:
                        hosts = [*hosts, ""]
                        cp["fallback_sni"] = fallback_sni
                        break
                if hosts:
                    hosts = sorted(hosts)
                    cp["match"] = {"sni": list(hosts)}
                else:
                    if default_sni:
                        cp["default_sni"] = default_sni
                    if fallback_sni:
                        cp["fallback_sni"] = fallback_sni
                if not policy_settings_empty(cp) or (forced and hosts):
                    policies.append(cp)
                    has_catch_all_policy = not hosts

            for addr in sb.parsed_keys:
                # names given explicitly with http:// get no certificates (caddy#2998),
                # unless the server only listens on the HTTP port anyway
                if (
                    addr.scheme == "http"
                    and addr.host
                    and listeners_use_any_port_other_than(server["listen"], http_port)
                ):
                    auto = auto if auto is not None else {}
                    skip = auto.setdefault("skip", [])
                    if addr.host not in skip:
                        skip.append(addr.host)
                has_tls = bool(sb.pile.get("tls.connection_policy")) or (
                    bool(addr.host) and (auto is None or addr.host not in auto.get("skip", []))
                )
                if addr.scheme == "https" or (
                    addr.scheme != "http" and addr.port != http_port and has_tls
                ):
                    qualifies_for_tls = True
                auto_will_add_policy = auto_will_add_policy and (
                    addr.port == https_port or (addr.port != http_port and bool(addr.host))
                )

            routes = build_subroute(list(sb.pile.get("route", [])), group_counter, True, order)
            server["routes"] = _append_site_routes(
                server.get("routes", []), routes, matcher_sets, p
            )

            if "error_route" in sb.pile:
                error_values = list(sb.pile["error_route"])
                # error routes with matchers go before those without
                go_stable_sort(
                    error_values,
                    lambda a, b: not (not a.value[0].get("match") and b.value[0].get("match")),
                )
                error_routes = [r for v in error_values for r in v.value]
                errors = server.setdefault("errors", {})
                errors["routes"] = _append_site_routes(
                    errors.get("routes", []), error_routes, matcher_sets, p
                )

            if logs is not None:
                _associate_logs(sb, logs, hosts)

        if logs is not None and "skip_hosts" in logs:
            logs["skip_hosts"] = sorted(logs["skip_hosts"])

        if policies:
            server["tls_connection_policies"] = policies
        _conflicting_schemes(server, p.blocks, options)

        # every handshake should find a policy, so add a catch-all one at the end
        # when needed (caddy#3004)
        if (
            qualifies_for_tls
            and not has_catch_all_policy
            and (policies or not auto_will_add_policy or default_sni or fallback_sni)
        ):
            catch_all: JSONDict = {}
            if default_sni:
                catch_all["default_sni"] = default_sni
            if fallback_sni:
                catch_all["fallback_sni"] = fallback_sni
            policies.append(catch_all)

        policies = consolidate_conn_policies(policies)
        if policies:
            server["tls_connection_policies"] = policies
        else:
            server.pop("tls_connection_policies", None)
        if auto is not None:
            server["automatic_https"] = auto
        if logs is not None:
            server["logs"] = logs
        routes_out = consolidate_routes(server.get("routes", []))
        if routes_out:
            server["routes"] = routes_out
        else:
            server.pop("routes", None)
        servers[f"srv{index}"] = server

    try:
        apply_server_options(servers, options)
    except ConfigError as exc:
        raise ConfigError(f"applying global server options: {exc.message}") from None
    return servers


def _associate_logs(sb: SiteBlock, logs: JSONDict, hosts: list[str]) -> None:
    """Map the site's hostnames to its access loggers, or mark them as not logged."""
    log_hosts = sb.hosts_from_keys(True)
    values = sb.pile.get("custom_log", [])
    for value in values:
        ncl: NamedCustomLog = value.value
        if ncl.no_hostname:
            continue
        if sb.has_host_catch_all_key() and not ncl.hostnames:
            # an unnamed (empty) log leaves the field at its zero value: omitted
            if ncl.name:
                logs["default_logger_name"] = ncl.name
            else:
                logs.pop("default_logger_name", None)
        elif ncl.hostnames:
            for host in ncl.hostnames:
                logs.setdefault("logger_names", {}).setdefault(host, []).append(ncl.name)
        else:
            for host in log_hosts:
                try:
                    bare, _ = split_host_port(host)
                except ValueError:
                    bare = host
                logs.setdefault("logger_names", {}).setdefault(bare, []).append(ncl.name)
    if not values:
        if not hosts:
            logs["skip_unmapped_hosts"] = True
        logs.setdefault("skip_hosts", []).extend(log_hosts)


def adapt_server_blocks(
    server_blocks: list[ServerBlock],
) -> tuple[JSONDict, list[Warning]]:
    """Parsed server blocks → Caddy JSON config and warnings."""
    warnings: list[Warning] = []
    options: dict[str, Any] = {}
    group_counter = GroupCounter()
    state: dict[str, Any] = {}

    for sblock in server_blocks:
        for j, key in enumerate(sblock.keys):
            if j == 0 and key.text.startswith("@"):
                raise ConfigError(
                    f"{key.file}:{key.line}: cannot define a matcher outside of a site block: "
                    f"'{key.text}'",
                    key.file,
                    key.line,
                )
            if _known_directive(key.text):
                raise ConfigError(
                    f"{key.file}:{key.line}: parsed '{key.text}' as a site address, but it is a "
                    "known directive; directives must appear in a site block",
                    key.file,
                    key.line,
                )

    blocks = list(server_blocks)
    if blocks and not blocks[0].keys and not blocks[0].is_named_route:
        _evaluate_global_options(blocks, options)
        blocks = blocks[1:]

    sites: list[SiteBlock] = []
    for sblock in blocks:
        if sblock.is_named_route:
            if sblock.segments:
                tok = sblock.keys[0] if sblock.keys else sblock.segments[0][0]
                raise ConfigError(
                    f"{tok.file}:{tok.line}: named routes are not supported by pyproxy",
                    tok.file,
                    tok.line,
                )
            continue
        for segment in sblock.segments:
            expand_segment(segment)
        if not sblock.keys:
            raise ConfigError(
                "server block without any key is global configuration, and if used, it must "
                "be first"
            )
        site = SiteBlock(
            keys=list(sblock.keys),
            segments=sblock.segments,
            has_braces=sblock.has_braces,
            origin=len(sites),
        )
        # blocks are parsed one after the other, so the first error in file order wins
        _parse_site_block(site, options, warnings, group_counter, state)
        sites.append(site)

    pairings = consolidate_listeners(map_blocks_to_listeners(sites, options))
    servers = _servers_from_pairings(pairings, options, warnings, group_counter)

    http_app: JSONDict = {}
    for name in ("http_port", "https_port"):
        if isinstance(options.get(name), int) and options[name]:
            http_app[name] = options[name]
    for name in ("grace_period", "shutdown_delay"):
        if options.get(name):
            http_app[name] = options[name]
    metrics = options.get("metrics")
    for server in servers.values():
        if "metrics" in server:
            # the deprecated per-server form is hoisted to the app; like Caddy, only
            # per_host survives the merge
            per_host = bool((metrics or {}).get("per_host") or server["metrics"].get("per_host"))
            metrics = {"per_host": True} if per_host else {}
            del server["metrics"]
    if metrics is not None:
        http_app["metrics"] = metrics
    if servers:
        http_app["servers"] = servers

    config: JSONDict = {}
    apps: JSONDict = {}
    if servers:
        apps["http"] = http_app
    tls_app = build_tls_app(pairings, options)
    if tls_app:
        apps["tls"] = tls_app
    pki_app = build_pki_app(options)
    if pki_app:
        apps["pki"] = pki_app
    if apps:
        config["apps"] = apps

    storage = options.get("storage")
    if storage:
        config["storage"] = storage
    admin = options.get("admin")
    if admin:
        config["admin"] = dict(admin)
    if options.get("persist_config") == "off":
        admin_cfg = config.setdefault("admin", {})
        admin_cfg.setdefault("config", {})["persist"] = False

    site_logs: list[NamedCustomLog] = [
        value.value for p in pairings for sb in p.blocks for value in sb.pile.get("custom_log", [])
    ]
    logging = build_logging(options, site_logs)
    if logging:
        config["logging"] = logging
    return config, warnings
