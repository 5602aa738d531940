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

OpenSSL only lets the SNI callback swap the certificate and ALPN: protocol range, ciphers and curves
are fixed by the listener context when the connection starts. So the listener context carries the
union of the policies' protocol ranges and the first policy's ciphers/curves; with one policy (the
usual case) this is exact.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
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

log = logging.getLogger("pyproxy.tls")

DEFAULT_ALPN = ("http/1.1",)  # Caddy offers h2 too; HTTP/2 comes with its own issue
SUPPORTED_ALPN = frozenset({"http/1.1"})

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
# Caddy's curve names -> OpenSSL short names; x25519mlkem768 is not in OpenSSL 3.0.
CURVES: Mapping[str, str] = {
    "x25519": "X25519",
    "secp256r1": "prime256v1",
    "secp384r1": "secp384r1",
    "secp521r1": "secp521r1",
}


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
    curves: tuple[str, ...] = ()  # OpenSSL group names; () = OpenSSL defaults
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
            alpn: tuple[str, ...] = DEFAULT_ALPN
        else:
            # Offering a protocol we cannot speak (h2, h3 for now) would break the connection.
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
        out.append(CURVES[name])
    return tuple(out)


def parse_connection_policies(
    policies: Sequence[Mapping[str, Any]] | None,
    where: str = "tls_connection_policies",
    supported_alpn: frozenset[str] = SUPPORTED_ALPN,
) -> tuple[ConnectionPolicy, ...]:
    """All policies of a server, in order; an absent/empty list means one default policy."""
    if not policies:
        return (ConnectionPolicy(),)
    return tuple(
        ConnectionPolicy.from_json(p, f"{where}[{i}]", supported_alpn)
        for i, p in enumerate(policies)
    )


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
        parse_connection_policies(policies, where)


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
    if policy.curves:
        if hasattr(ctx, "set_groups"):  # Python 3.15+
            ctx.set_groups(":".join(policy.curves))
        else:
            # Python < 3.15 can only set one group: use the most preferred one.
            if len(policy.curves) > 1:
                log.warning("curves: only %s applied (one group per context)", policy.curves[0])
            ctx.set_ecdh_curve(policy.curves[0])
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


def build_server_context(
    policy: ConnectionPolicy | None = None, *, session_tickets: bool = True
) -> ssl.SSLContext:
    """A server-side context with the policy's settings and no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_settings(ctx, policy or ConnectionPolicy(), session_tickets=session_tickets)
    return ctx


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

    def __init__(self, *, session_tickets: bool = True) -> None:
        self._snapshot = _Snapshot({}, None)
        self._write_lock = threading.Lock()
        self.session_tickets = session_tickets

    @classmethod
    def from_tls_app(cls, tls_app: Mapping[str, Any] | None) -> CertificateStore:
        """A store honouring `apps.tls.session_tickets.disabled` (tickets on by default)."""
        tickets = (tls_app or {}).get("session_tickets") or {}
        disabled = isinstance(tickets, Mapping) and bool(tickets.get("disabled"))
        return cls(session_tickets=not disabled)

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

    It also binds `read`, `write` and `pending` straight to the C object: ssl.SSLObject's
    versions are Python wrappers that only forward, and the loops' TLS transports call them for
    every record (uvloop caches these attributes when it wraps the connection).
    """

    _pyproxy_outgoing: ssl.MemoryBIO | None = None
    _pyproxy_failure: ssl.SSLError | None = None

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
    ) -> None:
        self.store = store
        if policies and all(isinstance(p, ConnectionPolicy) for p in policies):
            self.policies: tuple[ConnectionPolicy, ...] = tuple(
                p for p in policies if isinstance(p, ConnectionPolicy)
            )
        else:
            raw = [p for p in policies or () if isinstance(p, Mapping)]
            self.policies = parse_connection_policies(raw, where, supported_alpn)
        self._uniform_protocols = (
            len({(p.protocol_min, p.protocol_max) for p in self.policies}) == 1
        )

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

        Needed only when policies differ in protocol range (e.g. one site with `protocols
        tls1.3`): OpenSSL negotiates the version from the listener context, before SNI is seen.
        The engine calls this in connection_made and closes the connection when it is False.
        """
        if self._uniform_protocols:
            return True
        policy = getattr(ssl_obj, "pyproxy_policy", None)
        version = _VERSION_NAMES.get(ssl_obj.version() or "")
        if not isinstance(policy, ConnectionPolicy) or version is None:
            return True
        return policy.protocol_min <= version <= policy.protocol_max

    def _listener_settings(self) -> ConnectionPolicy:
        # The listener context fixes protocol range, ciphers and curves for the whole handshake
        # (OpenSSL reads them before SNI), so it must admit every policy's range.
        first = self.policies[0]
        return ConnectionPolicy(
            protocol_min=min(p.protocol_min for p in self.policies),
            protocol_max=max(p.protocol_max for p in self.policies),
            ciphers=first.ciphers,
            curves=first.curves,
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
        ctx.sslobject_class = AlertFlushingSSLObject

        def sni_callback(
            ssl_obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext
        ) -> int | None:
            try:
                chosen = self.choose(server_name, local_ip)
            except Exception:  # never let a bug turn into a hung handshake
                log.exception("%s: choosing a certificate failed", server_name or "(no SNI)")
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            if chosen is None:
                log.debug("%s: no certificate available", server_name or "(no SNI)")
                # Go's crypto/tls sends internal_error (80) when GetCertificate fails.
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            policy, ssl_obj.context = chosen
            # Remember the policy: its protocol range can only be checked once the handshake is
            # done (see handshake_allowed).
            with contextlib.suppress(AttributeError):
                ssl_obj.pyproxy_policy = policy  # type: ignore[union-attr]
            return None

        ctx.sni_callback = sni_callback
        return ctx


def selector_for_server(
    store: CertificateStore, server: Mapping[str, Any], name: str = "srv0"
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
    return SNISelector(store, policies, where=f"apps.http.servers.{name}.tls_connection_policies")
