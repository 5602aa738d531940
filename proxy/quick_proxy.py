"""`pyproxy reverse-proxy`: Caddy's quick reverse proxy (modules/caddyhttp/reverseproxy/
command.go, `cmdReverseProxy`).

The flags build the same JSON config Caddy builds — one server "proxy" listening on the
--from port, one route (matched on the --from host, if any) with a reverse_proxy handler to the
--to upstreams, the admin endpoint disabled and not persisted — and it is served in the
foreground like `run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from config.adapt.addresses import AddressError, parse_address
from config.adapt.matchers import canonical_header_key
from config.adapt.reverse_proxy import UpstreamError, expand_upstream, parse_upstream_address

log = logging.getLogger("pyproxy")

HTTP_PORT = "80"
HTTPS_PORT = "443"


class QuickProxyError(ValueError):
    """A bad flag; the text is Caddy's wording."""


def add_reverse_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        "-f",
        dest="from_",
        default="localhost",
        help="address on which to receive traffic (default localhost)",
    )
    parser.add_argument(
        "--to",
        "-t",
        action="append",
        default=[],
        help="upstream address to which traffic should be sent (repeatable)",
    )
    parser.add_argument(
        "--change-host-header",
        "-c",
        action="store_true",
        help="set the upstream Host header to the address of the upstream",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="disable TLS verification of the upstream (DISABLES SECURITY)",
    )
    parser.add_argument(
        "--disable-redirects", "-r", action="store_true", help="disable HTTP->HTTPS redirects"
    )
    parser.add_argument(
        "--internal-certs",
        "-i",
        action="store_true",
        help="use the internal CA for issuing certificates",
    )
    parser.add_argument(
        "--header-up",
        "-H",
        action="append",
        default=[],
        help='set a request header to the upstream ("Field: value")',
    )
    parser.add_argument(
        "--header-down",
        "-d",
        action="append",
        default=[],
        help='set a response header to the client ("Field: value")',
    )
    parser.add_argument("--access-log", action="store_true", help="enable the access log")
    parser.add_argument("--debug", "-v", action="store_true", help="enable debug logs")


def _split_to(values: Sequence[str]) -> list[str]:
    # cobra's StringSlice: each --to may also be a comma-separated list.
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _header_set(flag: str, values: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, text in enumerate(values):
        key, found, value = text.partition(":")
        key, value = key.strip(), value.strip()
        if not found or not key or not value:
            raise QuickProxyError(f'{flag} {i}: invalid format "{text}" (expecting "Field: value")')
        out[canonical_header_key(key)] = [value]  # Go's http.Header.Set
    return out


def build_config(args: argparse.Namespace) -> tuple[dict[str, Any], str, list[str]]:
    """(config, the --from address as Caddy logs it, the upstream dial addresses)."""
    from_text: str = args.from_
    to = _split_to(args.to)
    if not to:
        raise QuickProxyError("--to is required")
    try:
        from_addr = parse_address(from_text)
    except AddressError as exc:
        raise QuickProxyError(f"invalid downstream address {from_text}: {exc}") from None
    if from_addr.path:
        raise QuickProxyError(f"paths are not allowed: {from_text}")
    if not from_addr.scheme:
        scheme = "http" if from_addr.port == HTTP_PORT or not from_addr.host else "https"
        from_addr = dataclasses.replace(from_addr, scheme=scheme)
    if not from_addr.port:
        port = {"http": HTTP_PORT, "https": HTTPS_PORT}.get(from_addr.scheme, "")
        from_addr = dataclasses.replace(from_addr, port=port)

    # Mixed schemes are not supported: the first one given decides the transport.
    dials: list[str] = []
    to_scheme = ""
    upstreams: list[dict[str, Any]] = []
    for location in to:
        try:
            parsed = parse_upstream_address(location)
            expanded = expand_upstream(parsed)
        except UpstreamError as exc:
            raise QuickProxyError(f"invalid upstream address {location}: {exc}") from None
        if parsed.scheme and not to_scheme:
            to_scheme = parsed.scheme
        dials.append(parsed.dial_address())
        upstreams += [{"dial": dial} for dial in expanded]

    transport: dict[str, Any] = {"protocol": "http"}
    if to_scheme == "https":
        transport["tls"] = {"insecure_skip_verify": True} if args.insecure else {}
    handler: dict[str, Any] = {
        "handler": "reverse_proxy",
        "transport": transport,
        "upstreams": upstreams,
    }
    headers: dict[str, Any] = {}
    if args.header_up:
        headers["request"] = {"set": _header_set("header-up", args.header_up)}
    if args.header_down:
        headers["response"] = {"set": _header_set("header-down", args.header_down)}
    if args.change_host_header:
        request = headers.setdefault("request", {})
        request.setdefault("set", {})["Host"] = ["{http.reverse_proxy.upstream.hostport}"]
    if headers:
        handler["headers"] = headers

    route: dict[str, Any] = {"handle": [handler]}
    if from_addr.host:
        route["match"] = [{"host": [from_addr.host]}]
    server: dict[str, Any] = {"listen": [":" + from_addr.port], "routes": [route]}
    if args.access_log:
        server["logs"] = {}
    if from_addr.scheme == "http":
        server["automatic_https"] = {"disable": True}
    elif args.disable_redirects:
        server["automatic_https"] = {"disable_redirects": True}
    apps: dict[str, Any] = {"http": {"servers": {"proxy": server}}}
    if args.internal_certs and from_addr.host:
        apps["tls"] = {
            "automation": {
                "policies": [{"subjects": [from_addr.host], "issuers": [{"module": "internal"}]}]
            }
        }
    config: dict[str, Any] = {
        "admin": {"disabled": True, "config": {"persist": False}},
        "apps": apps,
    }
    if args.debug:
        config["logging"] = {"logs": {"default": {"level": "DEBUG"}}}
    return config, str(from_addr), dials


def reverse_proxy_command(args: argparse.Namespace) -> int:
    try:
        config, from_text, dials = build_config(args)
    except QuickProxyError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    from proxy.app import cmd_run

    # `run` serves a config file: this one lives only while it runs.
    fd, path = tempfile.mkstemp(prefix="pyproxy-reverse-proxy-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        run_args = argparse.Namespace(
            config=path,
            adapter="json",
            workers=0,
            envfile=None,
            no_uvloop=False,
            watch=False,
            environ=False,
            pidfile=None,
            resume=False,
        )
        # Caddy logs this after the config is running; the supervisor logs its startup lines.
        print(f"reverse-proxy: from {from_text} to {', '.join(dials)}", file=sys.stderr)
        return cmd_run(run_args)
    finally:
        os.unlink(path)
