"""TLS termination: certificates per SNI name, connection policies, and runtime hot swap.

This module owns the server side of TLS for the listeners:

- `ConnectionPolicy`: one entry of a server's `tls_connection_policies` (Caddy JSON) turned into
  ssl settings: protocol range (default TLS 1.2-1.3), cipher suites (Go names mapped to OpenSSL),
  curves, ALPN (`http/1.1` until HTTP/2 lands), `default_sni`, `fallback_sni`, `match.sni`, `drop`.
- `CertificateStore`: the process-wide certificate cache (name -> certificate), shared by every
  listener. `replace()` / `remove()` swap a whole dict, so the SNI callback, which only ever reads
  one attribute, sees either the old or the new mapping; handshakes already done keep their
  certificate, new handshakes see the new one.
- `SNISelector`: one per HTTP server; builds the listener `ssl.SSLContext` whose `sni_callback`
  picks the policy, then the certificate as certmagic does (exact name, then wildcard labels,
  then `default_sni` for an empty SNI, then `fallback_sni`), and otherwise fails the handshake with
  alert 80 (internal_error), as Caddy/Go do.
- TLS-ALPN-01 (RFC 8737): a ClientHello with SNI whose ALPN is exactly `acme-tls/1` (the CA's
  validation, certmagic's handshake.go test) gets the challenge certificate published in storage
  for that name, in a context whose only ALPN is `acme-tls/1`; the connection ends with the
  handshake and never reaches HTTP (`AlertFlushingSSLObject`). Without a published challenge
  the handshake fails (certmagic too). Every other hello gets the normal certificate, even
  while a challenge for the name is pending (renewals). Seeing the client's ALPN list at SNI
  time needs proxy.libssl; without it no challenge is answered (see `tls_alpn_servable`).

One listener, several policies: the SNI callback swaps the certificate's context, which brings
that context's certificate and ALPN; OpenSSL negotiates the protocol version before the callback,
from the listener context, so that context admits the union of the policies' ranges and the
engine closes a connection whose version its policy does not allow (`handshake_allowed`). TLS 1.2
ciphers and curves are read later from the connection itself, so the callback sets the chosen
policy's there when the policies differ; TLS 1.3 key shares are accepted before the callback,
so the listener offers only the curves all its policies allow (`check_listener_policies` has
the consequences). With one policy (the usual case) everything is exact.

Curves are Caddy's names (x25519, secp256r1, secp384r1, secp521r1; x25519mlkem768 with an
OpenSSL that has it, else a config error); without `curves`, Caddy's defaults. A whole list is
applied (`set_groups`), on every Python: 3.11's `set_ecdh_curve` takes one name, and 3.11.2's
does not know X25519, so proxy.libssl sets the list through libssl itself.

Session resumption (RFC 8446 §4.6.1, RFC 5077) uses tickets only, like Go's server: OpenSSL's
session-ID cache is turned off, since it would be one per worker process (and would resume TLS 1.2
clients with `session_tickets.disabled`). Ticket keys are shared by all workers: with its own key
per context, a worker could not decrypt another's tickets, and SO_REUSEPORT sends a client's
reconnects to any worker, so only about 1/N of resumptions succeeded. Options weighed:

- contexts made in the supervisor before the fork inherit one OpenSSL key, but contexts are made
  per config (reloads) and per certificate (ACME, file changes) in the workers: not possible;
- pyOpenSSL drives the OpenSSL inside the `cryptography` wheel, another library instance, and
  its contexts are not `ssl.SSLContext`s, which asyncio needs: not usable;
- a ticket key callback (SSL_CTX_set_tlsext_ticket_key_evp_cb) through ctypes would keep several
  keys, but runs Python inside every handshake, with EVP/MAC structures built through ctypes;
- chosen: set the key itself, SSL_CTX_set_tlsext_ticket_keys, once per listener context and
  once per rotation, through proxy.libssl (its docstring has why that is safe: the library the
  ssl module links, a layout probe, checks on every call). The key is derived from a secret the
  supervisor makes before the fork (`shared_ticket_secret`, `TicketKeys`) and rotated every
  `rotation_interval` (default 12 h, as Caddy). OpenSSL holds one key per context, so unlike
  Caddy (max_keys 4) a ticket from before a rotation gets a full handshake once; `max_keys` above
  1 is a config error. Without the bridge, tickets still work, per worker, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import os
import shutil
import ssl
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acme_client.certificates import (
    CertificateError,
    LoadedCertificate,
    load_pem_files,
    normalize_host,
    parse_pem_pair,
)
from acme_client.tls_alpn import ACME_TLS_1, ChallengeCertificate
from config.errors import ConfigError
from config.model import parse_duration, served_protocols
from proxy import libssl

log = logging.getLogger("pyproxy.tls")

# A server that serves HTTP/1.1 only (`protocols h1`), and a policy built without a server.
DEFAULT_ALPN = ("http/1.1",)
SUPPORTED_ALPN = frozenset({"http/1.1"})
# A server that serves h2 (`protocols` unset or listing h2): offered in Caddy's order (h2
# first, RFC 7301 §3.2 lets the server prefer), and what a policy's explicit `alpn` may name.
H2_ALPN = ("h2", "http/1.1")
H2_SUPPORTED_ALPN = frozenset(H2_ALPN)

PROTOCOLS: Mapping[str, ssl.TLSVersion] = {
    "tls1.0": ssl.TLSVersion.TLSv1,
    "tls1.1": ssl.TLSVersion.TLSv1_1,
    "tls1.2": ssl.TLSVersion.TLSv1_2,
    "tls1.3": ssl.TLSVersion.TLSv1_3,
}
_VERSION_NAMES: Mapping[str, ssl.TLSVersion] = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_PROTOCOL_MIN = ssl.TLSVersion.TLSv1_2
DEFAULT_PROTOCOL_MAX = ssl.TLSVersion.TLSv1_3

# Go's cipher suite names (Caddy's `cipher_suites`) -> OpenSSL names. TLS 1.3 suites are not
# configurable in Go either; they map to None and are accepted but ignored.
GO_CIPHER_SUITES: Mapping[str, str | None] = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
# Caddy's defaults on hardware with AES-NI (getOptimalDefaultCipherSuites): AEAD + ECDHE only.
DEFAULT_CIPHERS = ":".join(
    c
    for c in (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# Caddy's curve names (caddytls.SupportedCurves) -> OpenSSL group names. X25519MLKEM768 exists
# from OpenSSL 3.5 on; with an older libssl a policy naming it is a config error.
CURVES: Mapping[str, str] = {
    "x25519mlkem768": "X25519MLKEM768",
    "x25519": "X25519",
    "secp256r1": "prime256v1",
    "secp384r1": "secp384r1",
    "secp521r1": "secp521r1",
}
_CADDY_CURVE_NAMES: Mapping[str, str] = {v: k for k, v in CURVES.items()}
# caddytls defaultCurves, used when a policy names none: X25519MLKEM768 (where libssl has it),
# X25519, P-256. Not OpenSSL's default list, which adds X448, P-521 and P-384.
CADDY_DEFAULT_CURVES = ("x25519mlkem768", "x25519", "secp256r1")


class TLSConfigError(ValueError):
    """A TLS connection policy cannot be turned into ssl settings; the message names the field."""


# ---- connection policies ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """The parts of one Caddy TLS connection policy that pyproxy applies."""

    sni: tuple[str, ...] = ()  # match.sni; () = matches every ClientHello
    protocol_min: ssl.TLSVersion = DEFAULT_PROTOCOL_MIN
    protocol_max: ssl.TLSVersion = DEFAULT_PROTOCOL_MAX
    ciphers: str = DEFAULT_CIPHERS  # OpenSSL cipher string (TLS <= 1.2)
    curves: tuple[str, ...] = ()  # OpenSSL group names; () = Caddy's defaults (`groups`)
    alpn: tuple[str, ...] = DEFAULT_ALPN
    default_sni: str = ""
    fallback_sni: str = ""
    drop: bool = False
    matches_anything: bool = True  # False when a matcher we cannot evaluate is present

    @classmethod
    def from_json(
        cls,
        obj: Mapping[str, Any],
        where: str = "tls_connection_policies[0]",
        supported_alpn: frozenset[str] = SUPPORTED_ALPN,
        default_alpn: tuple[str, ...] = DEFAULT_ALPN,
    ) -> ConnectionPolicy:
        match = obj.get("match") or {}
        if not isinstance(match, Mapping):
            raise TLSConfigError(f"{where}.match: expected an object")
        sni: tuple[str, ...] = ()
        for key, value in match.items():
            if key == "sni":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise TLSConfigError(f"{where}.match.sni: expected a list of names")
                sni = tuple(normalize_host(v) for v in value)
            else:
                # remote_ip/local_ip need the socket, which the SNI callback does not see.
                # Not ignored: the policy would then apply to connections it was not meant for.
                raise TLSConfigError(
                    f"{where}.match.{key}: handshake matcher not supported by pyproxy"
                )
        pmin = _protocol(obj.get("protocol_min"), f"{where}.protocol_min", DEFAULT_PROTOCOL_MIN)
        pmax = _protocol(obj.get("protocol_max"), f"{where}.protocol_max", DEFAULT_PROTOCOL_MAX)
        if pmin > pmax:
            raise TLSConfigError(f"{where}: protocol min cannot be greater than protocol max")
        alpn_raw = obj.get("alpn")
        if alpn_raw is None:
            alpn: tuple[str, ...] = default_alpn
        else:
            # Offering a protocol we cannot speak (h3; h2 on a server without h2) would break
            # the connection.
            alpn = tuple(a for a in _strings(alpn_raw, f"{where}.alpn") if a in supported_alpn)
        if obj.get("client_authentication"):
            # Never served without it: dropping a client-certificate requirement would open
            # the site to everyone.
            raise TLSConfigError(
                f"{where}.client_authentication: client certificate authentication is not "
                "supported by pyproxy"
            )
        if obj.get("handshake_context"):
            log.warning("%s.handshake_context: not supported; ignored", where)
        # certificate_selection (the adapter's `any_tag` for `tls cert key`) needs no handling:
        # the store maps each certificate to the names it was loaded for.
        return cls(
            sni=sni,
            protocol_min=pmin,
            protocol_max=pmax,
            ciphers=_ciphers(obj.get("cipher_suites"), f"{where}.cipher_suites"),
            curves=_curves(obj.get("curves"), f"{where}.curves"),
            alpn=alpn,
            default_sni=normalize_host(_string(obj.get("default_sni"), f"{where}.default_sni")),
            fallback_sni=normalize_host(_string(obj.get("fallback_sni"), f"{where}.fallback_sni")),
            drop=bool(obj.get("drop")),
        )

    @property
    def groups(self) -> tuple[str, ...]:
        """The key-exchange groups this policy allows, most preferred first."""
        return self.curves or default_groups()

    def matches(self, server_name: str) -> bool:
        """MatchServerName: exact or wildcard, case-insensitive; no sni matcher matches all."""
        if not self.sni:
            return True
        return any(_match_wildcard(server_name, pattern) for pattern in self.sni)


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TLSConfigError(f"{where}: expected a string")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TLSConfigError(f"{where}: expected a list of strings")
    return list(value)


def _protocol(value: Any, where: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    if value in (None, ""):
        return default
    if value not in PROTOCOLS:
        raise TLSConfigError(f"{where}: unsupported protocol {value!r}")
    return PROTOCOLS[value]


def _ciphers(value: Any, where: str) -> str:
    if value is None:
        return DEFAULT_CIPHERS
    names: list[str] = []
    for go_name in _strings(value, where):
        if go_name not in GO_CIPHER_SUITES:
            raise TLSConfigError(f"{where}: unsupported cipher suite {go_name!r}")
        openssl_name = GO_CIPHER_SUITES[go_name]
        if openssl_name and openssl_name not in names:
            names.append(openssl_name)
    # Only TLS 1.3 suites listed: keep the defaults for TLS 1.2, as Go does.
    return ":".join(names) or DEFAULT_CIPHERS


def _curves(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    out: list[str] = []
    for name in _strings(value, where):
        if name not in CURVES:
            raise TLSConfigError(f"{where}: unsupported curve {name!r}")
        if CURVES[name] not in out:  # Caddy drops repeats too (buildStandardTLSConfig)
            out.append(CURVES[name])
    groups = tuple(out)
    problem = groups_problem(groups)
    if problem is not None:
        raise TLSConfigError(f"{where}: {problem}")
    return groups


# ---- key-exchange groups ----------------------------------------------------------------------


def set_groups(ctx: ssl.SSLContext, groups: Sequence[str]) -> None:
    """Restrict `ctx` to exactly these groups, in this order of preference.

    `SSLContext.set_groups` (Python 3.15+) when there is one, else SSL_CTX_set1_groups_list
    through proxy.libssl. `set_ecdh_curve` is only the last resort, for one EC curve: it takes a
    single name, and Python 3.11.2 resolves it with EC_KEY_new_by_curve_name, which does not
    know X25519 (`[EC: UNKNOWN_GROUP]`). Raises ValueError/ssl.SSLError when refused.
    """
    text = ":".join(groups)
    setter = getattr(ctx, "set_groups", None)
    if setter is not None:
        setter(text)
        return
    lib = libssl.bridge()
    if lib is not None:
        lib.set_groups(ctx, text)
        return
    if len(groups) == 1 and groups[0] not in ("X25519", "X25519MLKEM768"):
        ctx.set_ecdh_curve(groups[0])
        return
    raise libssl.LibSSLError(
        f"this Python's ssl module cannot set them ({libssl.unavailable_reason()})"
    )


@functools.lru_cache(maxsize=64)
def groups_problem(groups: tuple[str, ...]) -> str | None:
    """Why this runtime cannot restrict a context to `groups`, or None when it can (tried on a
    throwaway context, so `validate` fails where the workers would)."""
    names = ", ".join(_CADDY_CURVE_NAMES.get(g, g) for g in groups)
    try:
        set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), groups)
    except (ValueError, ssl.SSLError) as exc:
        can_set_lists = hasattr(ssl.SSLContext, "set_groups") or libssl.bridge() is not None
        others = tuple(g for g in groups if g != "X25519MLKEM768")
        if can_set_lists and others != groups and (not others or groups_problem(others) is None):
            # Caddy (Go 1.24+) always has it; OpenSSL only from 3.5 on.
            return (
                f"curve x25519mlkem768 is not available with {ssl.OPENSSL_VERSION} "
                "(OpenSSL 3.5 or later has X25519MLKEM768)"
            )
        return f"curves {names} cannot be applied: {exc}"
    return None


@functools.lru_cache(maxsize=1)
def default_groups() -> tuple[str, ...]:
    """Caddy's default curves that this libssl has; () (OpenSSL's own defaults, with a warning)
    when this Python cannot set a group list at all."""
    if not hasattr(ssl.SSLContext, "set_groups") and libssl.bridge() is None:
        log.warning(
            "TLS: OpenSSL's default curves apply instead of Caddy's (%s)",
            libssl.unavailable_reason(),
        )
        return ()
    return tuple(
        CURVES[name] for name in CADDY_DEFAULT_CURVES if groups_problem((CURVES[name],)) is None
    )


def parse_connection_policies(
    policies: Sequence[Mapping[str, Any]] | None,
    where: str = "tls_connection_policies",
    supported_alpn: frozenset[str] = SUPPORTED_ALPN,
    default_alpn: tuple[str, ...] = DEFAULT_ALPN,
) -> tuple[ConnectionPolicy, ...]:
    """All policies of a server, in order; an absent/empty list means one default policy."""
    if not policies:
        return (ConnectionPolicy(alpn=default_alpn),)
    return tuple(
        ConnectionPolicy.from_json(p, f"{where}[{i}]", supported_alpn, default_alpn)
        for i, p in enumerate(policies)
    )


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    """How one listener serves its policies (check_listener_policies)."""

    groups: tuple[str, ...]  # the listener context's groups
    per_connection_groups: bool  # the SNI callback sets the chosen policy's groups
    per_connection_ciphers: bool  # ... and its TLS 1.2 cipher list


def check_listener_policies(policies: Sequence[ConnectionPolicy], where: str) -> ListenerPlan:
    """How one listener serves these policies; TLSConfigError when it cannot.

    Ciphers: OpenSSL picks the TLS 1.2 suite after the SNI callback, from the connection's own
    list, so the callback sets the chosen policy's list and any policies can share a listener.

    Curves: OpenSSL takes the groups from the context the connection starts on. TLS 1.2 picks
    the ECDHE group after the SNI callback, from the connection's list, which the callback sets
    to the chosen policy's. TLS 1.3 accepts the client's key share while it parses the
    ClientHello, before the callback; only when no share is acceptable does it choose, after
    the callback, the group of its HelloRetryRequest. So the listener context offers only the
    groups that every policy allows (the intersection): a key share accepted before the callback
    is then allowed by whichever policy is chosen, and a client without such a share is asked
    for the chosen policy's most preferred group it supports. Never a group a policy forbids;
    the cost, when policies differ: a TLS 1.3 client whose share is for a group outside the
    intersection takes an extra round trip, and one that supports none of the chosen policy's
    other groups fails (a HelloRetryRequest for a group it already sent is fatal, RFC 8446
    §4.1.4), where Go (Caddy), which decides after GetConfigForClient, would accept its share.
    Policies with no group in common cannot share a listener: a config error.
    """
    serving = [(i, p) for i, p in enumerate(policies) if not p.drop]
    if not serving:
        return ListenerPlan(policies[0].groups if policies else (), False, False)
    first_index, first = serving[0]
    common = [g for g in first.groups if all(g in p.groups for _, p in serving)]
    uniform_groups = all(p.groups == first.groups for _, p in serving)
    uniform_ciphers = all(p.ciphers == first.ciphers for _, p in serving)
    other = next((i for i, p in serving if p.groups != first.groups), first_index)
    if not uniform_groups and not common:
        raise TLSConfigError(
            f"{where}[{other}].curves: {_curve_names(policies[other].groups)} have no curve in "
            f"common with {where}[{first_index}]'s {_curve_names(first.groups)} on the same "
            "listener; OpenSSL accepts a TLS 1.3 key share before the SNI name selects a "
            "policy, so the policies of one listener need a common curve (or serve these sites "
            "on another port)"
        )
    if not (uniform_groups and uniform_ciphers) and libssl.bridge() is None:
        field_name = "curves" if not uniform_groups else "cipher_suites"
        i = (
            other
            if not uniform_groups
            else next(i for i, p in serving if p.ciphers != first.ciphers)
        )
        raise TLSConfigError(
            f"{where}[{i}].{field_name}: differ from {where}[{first_index}]'s on the same "
            f"listener, and this Python cannot set them per connection "
            f"({libssl.unavailable_reason()})"
        )
    if not uniform_groups:
        log.info(
            "%s: policies differ in curves; TLS 1.3 clients without a key share for %s get a "
            "HelloRetryRequest",
            where,
            _curve_names(common),
        )
    return ListenerPlan(
        groups=first.groups if uniform_groups else tuple(common),
        per_connection_groups=not uniform_groups,
        per_connection_ciphers=not uniform_ciphers,
    )


def _curve_names(groups: Sequence[str]) -> str:
    if not groups:
        return "(OpenSSL's defaults)"
    return "[" + ", ".join(_CADDY_CURVE_NAMES.get(g, g) for g in groups) + "]"


def check_connection_policies(config: Mapping[str, Any]) -> None:
    """Parse every HTTP server's `tls_connection_policies` the way the workers will: what
    `validate` runs so that an unsupported policy fails before anything binds."""
    apps = config.get("apps")
    http = apps.get("http") if isinstance(apps, Mapping) else None
    servers = http.get("servers") if isinstance(http, Mapping) else None
    if not isinstance(servers, Mapping):
        return
    for name, server in servers.items():
        policies = server.get("tls_connection_policies") if isinstance(server, Mapping) else None
        if policies is None:
            continue
        where = f"apps.http.servers.{name}.tls_connection_policies"
        if not isinstance(policies, list):
            raise TLSConfigError(f"{where}: expected a list")
        check_listener_policies(parse_connection_policies(policies, where), where)


def check_tls_config(config: Mapping[str, Any]) -> None:
    """What `validate` runs so that a TLS setting pyproxy cannot apply fails before anything
    binds: every server's connection policies and `apps.tls.session_tickets`."""
    check_connection_policies(config)
    apps = config.get("apps")
    tls_app = apps.get("tls") if isinstance(apps, Mapping) else None
    if isinstance(tls_app, Mapping):
        SessionTickets.from_json(tls_app.get("session_tickets"))


def _match_wildcard(subject: str, pattern: str) -> bool:
    if subject == pattern:
        return True
    if "*" not in pattern:
        return False
    labels = subject.split(".")
    for i, label in enumerate(labels):
        if label:
            labels[i] = "*"
            if ".".join(labels) == pattern:
                return True
    return False


def _apply_settings(
    ctx: ssl.SSLContext, policy: ConnectionPolicy, *, session_tickets: bool
) -> None:
    ctx.minimum_version = policy.protocol_min
    ctx.maximum_version = policy.protocol_max
    ctx.set_ciphers(policy.ciphers)
    groups = policy.groups
    if groups:
        # Checked when the policy was parsed (groups_problem); a failure here is a bug.
        set_groups(ctx, groups)
    if policy.alpn:
        ctx.set_alpn_protocols(list(policy.alpn))
    # Go's server never renegotiates; tickets on by default for resumption (RFC 8446 §4.6.1).
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if not session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    else:
        # Go's server (Caddy) sends one TLS 1.3 ticket per handshake; OpenSSL's default is two,
        # and each costs a session copy, encryption and an HMAC (~15-25 % of a handshake here).
        ctx.num_tickets = 1
    lib = libssl.bridge()
    if lib is not None:
        # Go's server resumes by tickets only: it has no session-ID cache. OpenSSL's would be
        # per worker process (a reconnect lands on another worker most of the time) and would
        # keep resuming TLS 1.2 clients with `session_tickets.disabled`.
        lib.set_session_cache_mode(ctx, libssl.SSL_SESS_CACHE_OFF)


def build_server_context(
    policy: ConnectionPolicy | None = None, *, session_tickets: bool = True
) -> ssl.SSLContext:
    """A server-side context with the policy's settings and no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_settings(ctx, policy or ConnectionPolicy(), session_tickets=session_tickets)
    return ctx


# ---- session ticket keys ----------------------------------------------------------------------

# caddytls defaultSTEKRotationInterval.
DEFAULT_TICKET_KEY_ROTATION_S = 12 * 3600.0
_TICKET_KEY_INFO = b"pyproxy TLS session ticket key"


@dataclass(frozen=True, slots=True)
class SessionTickets:
    """`apps.tls.session_tickets` as pyproxy applies it (caddytls.SessionTicketService)."""

    enabled: bool = True
    rotation_interval_s: float = DEFAULT_TICKET_KEY_ROTATION_S
    rotate: bool = True

    @classmethod
    def from_json(cls, value: Any, where: str = "apps.tls.session_tickets") -> SessionTickets:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise TLSConfigError(f"{where}: expected an object")
        known = {"disabled", "disable_rotation", "rotation_interval", "max_keys", "key_source"}
        for key in value:
            if key not in known:
                raise TLSConfigError(f"{where}.{key}: unknown field")
        for key in ("disabled", "disable_rotation"):
            if not isinstance(value.get(key, False), bool):
                raise TLSConfigError(f"{where}.{key}: expected true or false")
        interval = DEFAULT_TICKET_KEY_ROTATION_S
        if value.get("rotation_interval") is not None:
            try:
                interval = parse_duration(value["rotation_interval"], f"{where}.rotation_interval")
            except ConfigError as exc:
                raise TLSConfigError(str(exc)) from exc
            if interval < 0:
                raise TLSConfigError(f"{where}.rotation_interval: must not be negative")
            interval = interval or DEFAULT_TICKET_KEY_ROTATION_S  # Caddy: 0 means the default
        max_keys = value.get("max_keys")
        if max_keys is not None and (
            isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys > 1
        ):
            # Caddy keeps the last max_keys keys (default 4) to decrypt older tickets. OpenSSL
            # takes one key per context (SSL_CTX_set_tlsext_ticket_keys), so after a rotation a
            # ticket from before it gets a full handshake: more than one key cannot be honoured.
            raise TLSConfigError(
                f"{where}.max_keys: pyproxy keeps one session ticket key (OpenSSL holds one per "
                "context); set 1 or leave it out"
            )
        source = value.get("key_source")
        if source is not None and (
            not isinstance(source, Mapping) or source.get("provider", "standard") != "standard"
        ):
            # `distributed` (keys in storage, shared by a cluster) is not implemented.
            raise TLSConfigError(
                f"{where}.key_source: only the standard provider (keys in memory) is supported"
            )
        return cls(
            enabled=not value.get("disabled", False),
            rotation_interval_s=interval,
            rotate=not value.get("disable_rotation", False),
        )


@dataclass(frozen=True, slots=True)
class TicketSecret:
    """The secret every worker derives the same ticket keys from, and the epoch origin."""

    secret: bytes
    origin: float  # time.monotonic() at creation: one clock for all processes of a boot


_ticket_secret: TicketSecret | None = None
_ticket_secret_lock = threading.Lock()


def shared_ticket_secret() -> TicketSecret:
    """This process's ticket secret, made on first use.

    The supervisor calls it before it forks the workers: they inherit the same secret, so a
    ticket one worker issues decrypts on every other (SO_REUSEPORT sends a client's reconnects
    to any of them). It lives as long as the process: tickets survive config reloads, as
    Caddy's standard STEK provider keeps its keys across reloads.
    """
    global _ticket_secret
    with _ticket_secret_lock:
        if _ticket_secret is None:
            _ticket_secret = TicketSecret(os.urandom(32), time.monotonic())
        return _ticket_secret


class TicketKeys:
    """Sets the session ticket keys of listener contexts and rotates them.

    The key of rotation epoch `n` (`n` intervals since the secret was made) is
    HKDF-Expand(secret, info || interval || n) (RFC 5869 §2.3), so every worker computes the
    same key at the same time without talking to the others. Only the listener contexts need
    it: OpenSSL encrypts and decrypts tickets with the connection's `session_ctx`, the context
    it started on, which the SNI callback's switch to a certificate's context does not change.
    """

    def __init__(self, settings: SessionTickets, secret: TicketSecret | None = None) -> None:
        self.settings = settings
        self.secret = secret or shared_ticket_secret()
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        self._epoch: int | None = None
        self._lock = threading.Lock()

    def epoch(self, now: float | None = None) -> int:
        if not self.settings.rotate:
            return 0
        elapsed = (time.monotonic() if now is None else now) - self.secret.origin
        return max(0, int(elapsed // self.settings.rotation_interval_s))

    def seconds_until_rotation(self, now: float | None = None) -> float | None:
        if not self.settings.rotate:
            return None
        now = time.monotonic() if now is None else now
        interval = self.settings.rotation_interval_s
        return self.secret.origin + (self.epoch(now) + 1) * interval - now

    def key(self, epoch: int, length: int) -> bytes:
        info = _TICKET_KEY_INFO + struct.pack(">dQ", self.settings.rotation_interval_s, epoch)
        out, block, counter = b"", b"", 1
        while len(out) < length:
            block = hmac.digest(self.secret.secret, block + info + bytes([counter]), "sha256")
            out += block
            counter += 1
        return out[:length]

    def install(self, ctx: ssl.SSLContext) -> bool:
        """Give `ctx` the current key and keep it rotated; False when libssl is out of reach
        (then OpenSSL's own per-context key stays: resumption works on the issuing worker)."""
        lib = libssl.bridge()
        if lib is None:
            _warn_tickets_per_worker()
            return False
        with self._lock:
            self._contexts.add(ctx)
            self._set_keys(lib, [ctx])
        return True

    def rotate(self, now: float | None = None) -> int:
        """Re-key every live context if the epoch changed; returns how many were re-keyed."""
        lib = libssl.bridge()
        if lib is None:
            return 0
        with self._lock:
            count = self._set_keys(lib, [], now)
        if count:
            log.info("TLS session ticket key rotated (%d listener contexts)", count)
        return count

    def _set_keys(
        self, lib: libssl.LibSSL, new: list[ssl.SSLContext], now: float | None = None
    ) -> int:
        # Under self._lock. A new epoch re-keys every context, so none keeps an old key.
        epoch = self.epoch(now)
        targets = new if epoch == self._epoch else list(self._contexts)
        self._epoch = epoch
        for ctx in targets:
            lib.set_ticket_keys(ctx, self.key(epoch, lib.ticket_key_length(ctx)))
        return len(targets)

    async def rotate_forever(self) -> None:
        """Run in each worker's loop (proxy.certs.CertRuntime) while the config serves. That is
        the thread whose handshakes read the keys, so none reads a key while it changes."""
        while True:
            delay = self.seconds_until_rotation()
            if delay is None:
                return
            # A timer, not a synchronisation: the next key is due at this time.
            await asyncio.sleep(max(delay, 0.0) + 0.001)
            self.rotate()


@functools.lru_cache(maxsize=1)
def _warn_tickets_per_worker() -> None:
    log.warning(
        "TLS session tickets: keys are per worker process (%s); with several workers a "
        "resumed session works only on the worker that issued the ticket",
        libssl.unavailable_reason(),
    )


# ---- loading PEM into a context ---------------------------------------------------------------


@contextlib.contextmanager
def _pem_paths(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    """Paths OpenSSL can open for the PEM bytes, gone when the block ends.

    Python 3.11's ssl loads chains only from paths. On Linux an anonymous memfd never touches a
    disk; elsewhere a 0700 temp directory holds the files for the duration of the load.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and Path("/proc/self/fd").is_dir():
        fds: list[int] = []
        try:
            for data in (cert_pem, key_pem):
                fd = memfd_create("pyproxy-tls", getattr(os, "MFD_CLOEXEC", 1))
                fds.append(fd)
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    tmp = tempfile.mkdtemp(prefix="pyproxy-tls-")  # mode 0700
    try:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        yield cert_path, key_path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_into_context(ctx: ssl.SSLContext, cert: LoadedCertificate) -> None:
    with _pem_paths(cert.certificate_pem, cert.private_key_pem) as (cert_path, key_path):
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise CertificateError(f"{cert.source}: loading into TLS context: {exc}") from exc


# ---- the certificate cache --------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Entry:
    """One loaded certificate and the per-policy contexts built for it (lazily)."""

    cert: LoadedCertificate
    session_tickets: bool
    contexts: dict[ConnectionPolicy, ssl.SSLContext] = field(default_factory=dict)

    def context_for(self, policy: ConnectionPolicy) -> ssl.SSLContext:
        ctx = self.contexts.get(policy)
        if ctx is None:
            # Two threads may race to build the same context; both results are equivalent.
            ctx = build_server_context(policy, session_tickets=self.session_tickets)
            load_into_context(ctx, self.cert)
            self.contexts[policy] = ctx
        return ctx


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Snapshot:
    by_name: Mapping[str, _Entry]
    # The one certificate held for IP addresses, if exactly one: served to SNI-less clients
    # when the listener's local address is unknown (a wildcard bind).
    sole_ip_entry: _Entry | None

    @classmethod
    def of(cls, by_name: dict[str, _Entry]) -> _Snapshot:
        ip_entries = {id(e): e for n, e in by_name.items() if _is_ip(n)}
        sole = next(iter(ip_entries.values())) if len(ip_entries) == 1 else None
        return cls(by_name, sole)


class CertificateStore:
    """Certificates by name, shared by all listeners; hot-swappable from any thread.

    Writers copy the mapping, change the copy and publish it with one attribute assignment, so a
    handshake in progress on the event loop never sees a half-updated mapping.
    """

    def __init__(self, *, session_tickets: bool | SessionTickets = True) -> None:
        self._snapshot = _Snapshot({}, None)
        self._write_lock = threading.Lock()
        if isinstance(session_tickets, bool):
            session_tickets = SessionTickets(enabled=session_tickets)
        self.session_tickets = session_tickets.enabled
        # None with tickets off: no keys to share or rotate.
        self.ticket_keys = TicketKeys(session_tickets) if session_tickets.enabled else None

    @classmethod
    def from_tls_app(cls, tls_app: Mapping[str, Any] | None) -> CertificateStore:
        """A store honouring `apps.tls.session_tickets` (tickets on by default)."""
        return cls(session_tickets=SessionTickets.from_json((tls_app or {}).get("session_tickets")))

    @property
    def _by_name(self) -> Mapping[str, _Entry]:
        return self._snapshot.by_name

    # -- writers --

    def add(self, cert: LoadedCertificate, names: Iterable[str] | None = None) -> tuple[str, ...]:
        """Serve `cert` for `names` (default: its SANs); returns the names now mapped to it.

        The default-policy context is built before publishing, so an unusable certificate raises
        CertificateError here and the previous certificate stays in service.
        """
        chosen = tuple(normalize_host(n) for n in (cert.names if names is None else names))
        if not chosen:
            raise CertificateError(f"{cert.source}: certificate has no names to serve")
        entry = _Entry(cert, self.session_tickets)
        entry.context_for(ConnectionPolicy())
        with self._write_lock:
            mapping = dict(self._by_name)
            for name in chosen:
                mapping[name] = entry
            self._snapshot = _Snapshot.of(mapping)
        return chosen

    def add_pem(
        self,
        cert_pem: bytes,
        key_pem: bytes,
        names: Iterable[str] | None = None,
        *,
        label: str = "certificate",
    ) -> tuple[str, ...]:
        cert = parse_pem_pair(cert_pem, key_pem, cert_label=label, key_label=f"{label} key")
        return self.add(cert, names)

    def add_files(
        self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
    ) -> tuple[str, ...]:
        """`tls cert.pem key.pem`: errors name the unreadable or mismatched file."""
        return self.add(load_pem_files(cert_path, key_path))

    def replace(
        self, name: str | Iterable[str], cert_pem: bytes, key_pem: bytes
    ) -> tuple[str, ...]:
        """Swap the certificate for `name` (or several names); existing connections unaffected."""
        names = [name] if isinstance(name, str) else list(name)
        return self.add_pem(cert_pem, key_pem, names, label=names[0] if names else "certificate")

    def remove(self, name: str) -> bool:
        key = normalize_host(name)
        with self._write_lock:
            if key not in self._by_name:
                return False
            mapping = dict(self._by_name)
            del mapping[key]
            self._snapshot = _Snapshot.of(mapping)
        return True

    # -- readers --

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_name))

    def get(self, name: str) -> LoadedCertificate | None:
        entry = self._by_name.get(normalize_host(name))
        return entry.cert if entry else None

    def covers(self, name: str) -> bool:
        return self._lookup(self._by_name, normalize_host(name)) is not None

    @staticmethod
    def _lookup(mapping: Mapping[str, _Entry], name: str) -> _Entry | None:
        # certmagic's getCertificateFromCache: exact, then replace labels with `*` left to right.
        entry = mapping.get(name)
        if entry is not None:
            return entry
        labels = name.split(".")
        for i in range(len(labels)):
            labels[i] = "*"
            entry = mapping.get(".".join(labels))
            if entry is not None:
                return entry
        return None

    def select(
        self, server_name: str | None, policy: ConnectionPolicy, local_ip: str | None = None
    ) -> _Entry | None:
        """The certificate entry for a ClientHello, or None (Caddy: no certificate)."""
        snapshot = self._snapshot  # one read: a concurrent swap cannot split this lookup
        mapping = snapshot.by_name
        name = normalize_host(server_name) if server_name else ""
        if not name:
            # No SNI (e.g. https://127.0.0.1): an IP certificate for the local address, then
            # default_sni. Without the local address (wildcard listener), the only IP
            # certificate is the best guess; the client still verifies it.
            if local_ip:
                entry = mapping.get(normalize_host(local_ip))
                if entry is not None:
                    return entry
            elif snapshot.sole_ip_entry is not None:
                return snapshot.sole_ip_entry
            if policy.default_sni:
                entry = mapping.get(policy.default_sni)
                if entry is not None:
                    return entry
        else:
            entry = self._lookup(mapping, name)
            if entry is not None:
                return entry
        if policy.fallback_sni:
            return mapping.get(policy.fallback_sni)
        return None


# ---- handshake alerts -------------------------------------------------------------------------


class AlertFlushingSSLObject(ssl.SSLObject):
    """An SSLObject whose failed server handshake lets the transport send the alert first.

    asyncio's and uvloop's SSL transports abort the connection the moment `do_handshake()`
    raises, dropping the alert OpenSSL has just written to the outgoing buffer, so clients see a
    bare TCP reset instead of alert 80. This class reports the first failure as "want read": the
    transport then flushes the outgoing buffer (the alert) and waits; the client, having got a
    fatal alert, closes, and any later handshake step raises the stored error. Works for both
    loops without patching them; only the handshake goes through this Python override.

    A TLS-ALPN-01 challenge handshake (RFC 8737 §3: the CA only checks the certificate) ends
    the same way once it has succeeded: "want read" lets the transport flush the last flight
    (TLS 1.2: the server's Finished), and the connection never reaches the HTTP protocol; the
    CA closes, and anything it sends instead makes the next step raise.

    It also binds `read`, `write` and `pending` straight to the C object: ssl.SSLObject's
    versions are Python wrappers that only forward, and the loops' TLS transports call them for
    every record (uvloop caches these attributes when it wraps the connection).
    """

    _pyproxy_outgoing: ssl.MemoryBIO | None = None
    _pyproxy_failure: ssl.SSLError | None = None
    # Set by the SNI callback when it switched to the challenge context.
    pyproxy_acme_challenge = False

    @classmethod
    def _create(
        cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any
    ) -> AlertFlushingSSLObject:
        # SSLContext.wrap_bio calls sslobject_class._create (private, not in typeshed).
        base: Any = super()
        obj: AlertFlushingSSLObject = base._create(incoming, outgoing, *args, **kwargs)
        obj._pyproxy_outgoing = outgoing
        c_object = obj._sslobj  # type: ignore[attr-defined]
        obj.read = c_object.read  # type: ignore[method-assign]
        obj.write = c_object.write  # type: ignore[method-assign]
        obj.pending = c_object.pending  # type: ignore[method-assign]
        return obj

    def do_handshake(self) -> None:
        if self._pyproxy_failure is not None:
            raise self._pyproxy_failure
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            outgoing = self._pyproxy_outgoing
            if self.server_side and outgoing is not None and outgoing.pending:
                self._pyproxy_failure = exc
                raise ssl.SSLWantReadError(f"handshake failed, sending alert: {exc}") from exc
            raise
        if self.pyproxy_acme_challenge:
            self._pyproxy_failure = ssl.SSLError("tls-alpn-01 challenge answered; closing")
            raise ssl.SSLWantReadError("tls-alpn-01 challenge answered, flushing")


# ---- TLS-ALPN-01 challenge handshakes -----------------------------------------------------------

# The challenge certificate of an SNI name (acme_client.tls_alpn), None when none is pending.
AcmeChallengeLookup = Callable[[str], ChallengeCertificate | None]


def tls_alpn_servable() -> bool:
    """Can this process answer TLS-ALPN-01? It needs the client's ALPN list at SNI time."""
    return libssl.bridge() is not None


@functools.lru_cache(maxsize=64)
def challenge_context(challenge: ChallengeCertificate) -> ssl.SSLContext:
    """A context whose only certificate is the challenge's and whose only ALPN is acme-tls/1.

    Cached per challenge (ChallengeCertificate is itself cached per name + key authorization):
    a CA validates from several vantage points, each a full handshake.
    """
    # RFC 8737 section 3: TLS 1.2 or later; the CA must negotiate acme-tls/1.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ACME_TLS_1])
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    with _pem_paths(challenge.certificate_pem, challenge.private_key_pem) as (cert, key):
        ctx.load_cert_chain(cert, key)
    return ctx


# ---- per-server SNI selection -----------------------------------------------------------------


class SNISelector:
    """One HTTP server's TLS: its connection policies over the shared certificate store."""

    def __init__(
        self,
        store: CertificateStore,
        policies: Sequence[Mapping[str, Any]] | Sequence[ConnectionPolicy] | None = None,
        *,
        where: str = "tls_connection_policies",
        supported_alpn: frozenset[str] = SUPPORTED_ALPN,
        default_alpn: tuple[str, ...] = DEFAULT_ALPN,
        acme_challenge: AcmeChallengeLookup | None = None,
    ) -> None:
        self.store = store
        # The TLS-ALPN-01 challenge certificate for an SNI name, None when none is pending;
        # only asked for hellos offering exactly acme-tls/1, and only with the libssl bridge.
        self.acme_challenge = acme_challenge if tls_alpn_servable() else None
        if policies and all(isinstance(p, ConnectionPolicy) for p in policies):
            self.policies: tuple[ConnectionPolicy, ...] = tuple(
                p for p in policies if isinstance(p, ConnectionPolicy)
            )
        else:
            raw = [p for p in policies or () if isinstance(p, Mapping)]
            self.policies = parse_connection_policies(raw, where, supported_alpn, default_alpn)
        self._uniform_protocols = (
            len({(p.protocol_min, p.protocol_max) for p in self.policies}) == 1
        )
        self._plan = check_listener_policies(self.policies, where)

    def policy_for(self, server_name: str | None) -> ConnectionPolicy | None:
        name = normalize_host(server_name) if server_name else ""
        return next((p for p in self.policies if p.matches(name)), None)

    def choose(
        self, server_name: str | None, local_ip: str | None = None
    ) -> tuple[ConnectionPolicy, ssl.SSLContext] | None:
        """The policy and context for this ClientHello, or None to fail the handshake."""
        policy = self.policy_for(server_name)
        if policy is None or policy.drop:
            return None
        entry = self.store.select(server_name, policy, local_ip)
        if entry is None:
            return None
        return policy, entry.context_for(policy)

    def handshake_allowed(self, ssl_obj: ssl.SSLObject | ssl.SSLSocket) -> bool:
        """After the handshake: does the negotiated version fit the policy that was chosen?

        Needed when policies differ in protocol range (e.g. one site with `protocols
        tls1.3`): OpenSSL negotiates the version from the listener context, before SNI is seen.
        Also False for a TLS-ALPN-01 challenge handshake (AlertFlushingSSLObject already keeps
        those from completing on the engine's listeners).
        The engine calls this in connection_made and closes the connection when it is False.
        """
        if getattr(ssl_obj, "pyproxy_acme_challenge", False):
            # RFC 8737 section 3: the challenge handshake is all there is; no HTTP follows.
            return False
        if self._uniform_protocols:
            return True
        policy = getattr(ssl_obj, "pyproxy_policy", None)
        version = _VERSION_NAMES.get(ssl_obj.version() or "")
        if not isinstance(policy, ConnectionPolicy) or version is None:
            return True
        return policy.protocol_min <= version <= policy.protocol_max

    def is_acme_challenge_hello(
        self, ssl_obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None
    ) -> bool:
        """In the SNI callback: a CA's TLS-ALPN-01 hello (SNI, ALPN exactly acme-tls/1)?"""
        lib = libssl.bridge()
        if self.acme_challenge is None or lib is None or not server_name:
            return False
        return lib.hello_offers_only_acme_tls(ssl_obj)

    def answer_acme_challenge(
        self, ssl_obj: ssl.SSLObject | ssl.SSLSocket, server_name: str
    ) -> int | None:
        """Switch a challenge hello to the challenge context: None, or the alert to send."""
        lookup = self.acme_challenge
        challenge = lookup(server_name) if lookup is not None else None
        if challenge is None:
            # certmagic fails the handshake too: the CA asked for a challenge we do not have.
            log.warning("%s: tls-alpn-01 handshake, but no challenge is pending", server_name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        ssl_obj.context = challenge_context(challenge)
        with contextlib.suppress(AttributeError):
            ssl_obj.pyproxy_acme_challenge = True  # type: ignore[union-attr]
            ssl_obj.pyproxy_sni = server_name  # type: ignore[union-attr]
        log.info("%s: served the tls-alpn-01 challenge certificate", server_name)
        return None

    def _listener_settings(self) -> ConnectionPolicy:
        # The listener context fixes the protocol range for the whole handshake (OpenSSL reads
        # it before SNI), so it must admit every policy's range; its curves are the ones every
        # policy allows (check_listener_policies); the chosen policy's own curves and ciphers
        # are set on the connection by the SNI callback when the policies differ.
        first = next((p for p in self.policies if not p.drop), self.policies[0])
        return ConnectionPolicy(
            protocol_min=min(p.protocol_min for p in self.policies),
            protocol_max=max(p.protocol_max for p in self.policies),
            ciphers=first.ciphers,
            curves=self._plan.groups,
            alpn=first.alpn,
        )

    def server_context(self, local_ip: str | None = None) -> ssl.SSLContext:
        """The context to give `loop.create_server(ssl=...)`.

        `local_ip` is the listener's bound address when it is a specific IP: clients connecting
        to an IP send no SNI, and the certificate for that IP is then served (certmagic does the
        same with the connection's local address).
        """
        ctx = build_server_context(
            self._listener_settings(), session_tickets=self.store.session_tickets
        )
        if self.store.ticket_keys is not None:
            self.store.ticket_keys.install(ctx)
        plan = self._plan
        per_connection = (
            libssl.bridge() if plan.per_connection_groups or plan.per_connection_ciphers else None
        )
        ctx.sslobject_class = AlertFlushingSSLObject
        challenge_lib = libssl.bridge() if self.acme_challenge is not None else None
        if challenge_lib is not None:
            challenge_lib.watch_acme_tls_hellos(ctx)

        def sni_callback(
            ssl_obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext
        ) -> int | None:
            try:
                if (
                    challenge_lib is not None
                    and server_name
                    and self.is_acme_challenge_hello(ssl_obj, server_name)
                ):
                    return self.answer_acme_challenge(ssl_obj, server_name)
                chosen = self.choose(server_name, local_ip)
            except Exception:  # never let a bug turn into a hung handshake
                log.exception("%s: choosing a certificate failed", server_name or "(no SNI)")
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            if chosen is None:
                log.debug("%s: no certificate available", server_name or "(no SNI)")
                # Go's crypto/tls sends internal_error (80) when GetCertificate fails.
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            policy, ssl_obj.context = chosen
            if per_connection is not None:
                # See check_listener_policies: what OpenSSL still reads from the connection.
                try:
                    if plan.per_connection_groups:
                        per_connection.set_connection_groups(ssl_obj, ":".join(policy.groups))
                    if plan.per_connection_ciphers:
                        per_connection.set_connection_ciphers(ssl_obj, policy.ciphers)
                except (libssl.LibSSLError, TypeError):
                    log.exception("%s: applying the policy to the connection failed", server_name)
                    return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            # Remember the policy: its protocol range can only be checked once the handshake is
            # done (see handshake_allowed).
            with contextlib.suppress(AttributeError):
                ssl_obj.pyproxy_policy = policy  # type: ignore[union-attr]
                # A server-side SSLObject has no server_hostname: logs and placeholders read this.
                ssl_obj.pyproxy_sni = server_name or ""  # type: ignore[union-attr]
            return None

        ctx.sni_callback = sni_callback
        return ctx


def selector_for_server(
    store: CertificateStore,
    server: Mapping[str, Any],
    name: str = "srv0",
    *,
    acme_challenge: AcmeChallengeLookup | None = None,
) -> SNISelector | None:
    """The selector for one `apps.http.servers.<name>` object, or None for a plain-HTTP server.

    Use the config from `config.auto_https.plan_automatic_https(...).config`, where servers that
    automatic HTTPS turns into HTTPS servers already carry their (empty) connection policy.
    """
    policies = server.get("tls_connection_policies")
    if policies is None:
        return None
    if not isinstance(policies, list):
        raise TLSConfigError(f"apps.http.servers.{name}.tls_connection_policies: expected a list")
    # Caddy fills a policy's empty ALPN from the server's protocols (h2 -> "h2", h1 ->
    # "http/1.1"); unset protocols serve h1 and h2 (config.model.served_protocols), so h2 is
    # offered unless an explicit list leaves it out.
    h2 = "h2" in served_protocols(tuple(server.get("protocols") or ()))
    return SNISelector(
        store,
        policies,
        where=f"apps.http.servers.{name}.tls_connection_policies",
        supported_alpn=H2_SUPPORTED_ALPN if h2 else SUPPORTED_ALPN,
        default_alpn=H2_ALPN if h2 else DEFAULT_ALPN,
        acme_challenge=acme_challenge,
    )
