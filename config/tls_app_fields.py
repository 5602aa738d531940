"""Strict decoding of the `tls` app (`apps.tls`) and of its issuer modules.

Caddy decodes every module with `DisallowUnknownFields` (caddy.StrictUnmarshalJSON): a misspelt
key is `json: unknown field "x"`, and a value of the wrong JSON type fails the load. The runtime
(proxy/certs.py, proxy/tls.py, acme_client/, config/auto_https.py) reads the tls app loosely, so
this module checks the whole app first, against declarations of every field current Caddy has
(modules/caddytls/tls.go, automation.go, acmeissuer.go, zerosslissuer.go, internalissuer.go,
fileloader.go, pemloader.go, sessiontickets.go; acmez's `acme.EAB`).

Each declared field is one of:

- honoured: the runtime reads it by name (tests/unit/test_tls_app_field_audit.py checks that), or
  its `honoured` note says why the value already is pyproxy's behaviour (e.g.
  `disable_storage_clean`: pyproxy never cleans storage);
- refused: a ConfigError naming the JSON path and the reason. A refused field set to its Go zero
  value (false, 0, "", empty) is accepted: Caddy omits such a field (`omitempty`) and takes its
  default, which asks for nothing pyproxy lacks.

Some honoured fields carry a rule of their own (`check`): the challenge `alternate_port` and
`bind_host` must name a listener of the config (pyproxy answers challenges on its own servers and
starts no solver listener), `key_type` one of Caddy's key types, and so on.

Issuer entries of modules other than `acme`, `zerossl` and `internal` are left to
proxy.certs.check_issuer_modules, which refuses them by name.
Pure: no asyncio, socket or ssl imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from config.errors import ConfigError
from config.model import (
    DEFAULT_HTTP_PORT,
    DEFAULT_HTTPS_PORT,
    parse_duration,
    parse_network_address,
)

# ---- what the checks need to know about the rest of the config --------------------------------


@dataclass(frozen=True, slots=True)
class Listeners:
    """Where the config's HTTP servers listen: pyproxy answers ACME challenges there.

    `ports` are those of every server's `listen` plus the http app's `http_port` (automatic
    HTTPS adds its redirect listener there, which answers HTTP-01) and `https_port`. `hosts` are
    the listen hosts; "" means all interfaces.
    """

    ports: frozenset[int] = frozenset()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def of_config(cls, config: Mapping[str, Any]) -> Listeners:
        apps = config.get("apps")
        http = apps.get("http") if isinstance(apps, Mapping) else None
        if not isinstance(http, Mapping):
            return cls()
        ports: set[int] = set()
        hosts: set[str] = set()
        for key, default in (("http_port", DEFAULT_HTTP_PORT), ("https_port", DEFAULT_HTTPS_PORT)):
            value = http.get(key, default)
            ports.add(value if isinstance(value, int) and not isinstance(value, bool) else default)
        servers = http.get("servers")
        for srv in servers.values() if isinstance(servers, Mapping) else ():
            listen = srv.get("listen") if isinstance(srv, Mapping) else None
            for text in listen if isinstance(listen, list) else ():
                if not isinstance(text, str):
                    continue
                try:
                    addr = parse_network_address(text, "listen", DEFAULT_HTTPS_PORT)
                except ConfigError:
                    continue  # the http app's loader reports it, with its path
                if addr.is_unix:
                    continue
                hosts.add(addr.host)
                ports.update(addr.ports())
        return cls(frozenset(ports), frozenset(hosts))


# ---- declarations ---------------------------------------------------------------------------

Check = Callable[[Any, str, Listeners], None]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a Caddy JSON object: its JSON type and what pyproxy does with it.

    kind: "string", "bool", "int", "number", "duration", "strings" (array of strings),
    "string_map", "object" (`obj`), "objects" (array of `obj`), "issuers" (array of issuer
    modules), "any" (a module or raw JSON pyproxy refuses without looking inside).
    """

    kind: str
    refused: str = ""  # why pyproxy refuses it; "" = accepted
    honoured: str = ""  # how it is honoured when no runtime code reads it by name
    obj: ObjectSpec | None = None
    check: Check | None = None


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """A Caddy JSON object, named after its Go type. `module_namespace` set: the keys are module
    names of that namespace (a module map), so an unknown key is an unknown module."""

    name: str
    fields: Mapping[str, FieldSpec]
    module_namespace: str = ""


def _refuse(kind: str, reason: str) -> FieldSpec:
    return FieldSpec(kind, refused=reason)


# -- the rules of single fields --


def _check_port(challenge: str, field: str = "alternate_port") -> Check:
    def check(value: Any, where: str, listeners: Listeners) -> None:
        if not 0 <= value <= 65535:
            raise ConfigError(f"{where}: port {value} is out of range")
        if value and value not in listeners.ports:
            # Caddy would start a solver listener on this port (certmagic httpSolver /
            # tlsALPNSolver). pyproxy starts none: it answers on its own servers' listeners.
            raise ConfigError(
                f"{where}: no server of this config listens on port {value}; pyproxy answers the "
                f"{challenge} challenge on its own listeners and starts no solver on another port "
                f"(listen on it, or remove {field})"
            )

    return check


def _check_bind_host(value: Any, where: str, listeners: Listeners) -> None:
    if value and value not in listeners.hosts and "" not in listeners.hosts:
        raise ConfigError(
            f"{where}: no server of this config listens on host {value!r}; pyproxy answers "
            "challenges on its own listeners and starts no solver bound elsewhere"
        )


# Caddy's supportedCertKeyTypes (modules/caddytls/values.go); "" is certmagic's default.
KEY_TYPES = ("ed25519", "p256", "p384", "rsa2048", "rsa4096")


def _check_key_type(value: Any, where: str, _listeners: Listeners) -> None:
    if value and value not in KEY_TYPES:
        # Caddy expands placeholders here first; pyproxy does not (a deviation).
        raise ConfigError(
            f"{where}: unknown key type {value!r} (supported: {', '.join(KEY_TYPES)})"
        )


def _check_ratio(value: Any, where: str, _listeners: Listeners) -> None:
    # 0 is certmagic's default (1/3). Caddy takes any value; at 1 or more a certificate is always
    # due for renewal, and proxy.certs falls back to the default outside 0..1: refuse instead.
    if not 0 <= value < 1:
        raise ConfigError(f"{where}: must be at least 0 and less than 1, got {value!r}")


def _check_not_negative_int(value: Any, where: str, _listeners: Listeners) -> None:
    if value < 0:
        raise ConfigError(f"{where}: must not be negative")


def _check_not_negative(value: Any, where: str, _listeners: Listeners) -> None:
    if parse_duration(value, where) < 0:
        raise ConfigError(f"{where}: must not be negative")


def _check_one_root(value: Any, where: str, _listeners: Listeners) -> None:
    if len(value) > 1:
        # acme_client.issuer verifies the CA's TLS certificate against one PEM file.
        raise ConfigError(
            f"{where}: pyproxy verifies the ACME server against one root file, got {len(value)}; "
            "put the roots into one PEM file"
        )


def _check_max_keys(value: Any, where: str, _listeners: Listeners) -> None:
    if value > 1:
        # The same rule as proxy.tls.SessionTickets, here so that validate refuses it too.
        raise ConfigError(
            f"{where}: pyproxy keeps one session ticket key (OpenSSL holds one per context); "
            "set 1 or leave it out"
        )


def _check_stek_provider(value: Any, where: str, _listeners: Listeners) -> None:
    if value and value != "standard":
        raise ConfigError(
            f"{where}: session ticket key provider {value!r} is not supported by pyproxy; only "
            "the standard provider (keys in memory) is"
        )


# -- the objects --

NOT_STAPLED = (
    "pyproxy never staples OCSP responses, so stapling is always off (a deviation from Caddy "
    "when this is false)"
)
NO_DNS = "pyproxy has no DNS provider modules and no DNS-01 challenge"

EAB = ObjectSpec("acme.EAB", {"key_id": FieldSpec("string"), "mac_key": FieldSpec("string")})
CHAIN_PREFERENCE = ObjectSpec(
    "caddytls.ChainPreference",
    {
        "smallest": FieldSpec("bool"),
        "root_common_name": FieldSpec("strings"),
        "any_common_name": FieldSpec("strings"),
    },
)
HTTP_CHALLENGE = ObjectSpec(
    "caddytls.HTTPChallengeConfig",
    {
        # Honoured by acme_client.issuer (being implemented alongside this checker).
        "disabled": FieldSpec("bool"),
        "alternate_port": FieldSpec(
            "int",
            honoured="the port must be one pyproxy listens on, where it answers HTTP-01",
            check=_check_port("HTTP-01"),
        ),
    },
)
TLSALPN_CHALLENGE = ObjectSpec(
    "caddytls.TLSALPNChallengeConfig",
    {
        "disabled": FieldSpec("bool"),
        "alternate_port": FieldSpec(
            "int",
            honoured="the port must be one pyproxy listens on",
            check=_check_port("TLS-ALPN-01"),
        ),
    },
)
CHALLENGES = ObjectSpec(
    "caddytls.ChallengesConfig",
    {
        "http": FieldSpec("object", obj=HTTP_CHALLENGE),
        "tls-alpn": FieldSpec("object", obj=TLSALPN_CHALLENGE),
        "dns": _refuse("object", NO_DNS),
        "bind_host": FieldSpec(
            "string",
            honoured="the host must be one pyproxy's servers listen on, where it answers",
            check=_check_bind_host,
        ),
        # certmagic's distributed solving publishes challenge info to storage so that any
        # instance can answer. pyproxy always does (its worker processes are such instances and
        # must share it); `false` only lets Caddy skip those storage writes, so solving through
        # storage anyway answers the same challenges: a harmless deviation.
        "distributed": FieldSpec(
            "bool",
            honoured="pyproxy always solves through storage (its workers share challenges); "
            "false only lets Caddy skip those writes",
        ),
    },
)
ACME_ISSUER = ObjectSpec(
    "caddytls.ACMEIssuer",
    {
        "module": FieldSpec("string"),
        "ca": FieldSpec("string"),
        "test_ca": _refuse(
            "string", "pyproxy does not retry a failed order against a test CA (certmagic does)"
        ),
        "email": FieldSpec("string"),
        "profile": FieldSpec("string"),
        "account_key": _refuse(
            "string", "pyproxy creates and stores its own ACME account key; it takes none"
        ),
        "external_account": FieldSpec("object", obj=EAB),
        "acme_timeout": _refuse(
            "duration", "the ACME client's network timeout is fixed (30 s per request)"
        ),
        "challenges": FieldSpec("object", obj=CHALLENGES),
        "trusted_roots_pem_files": FieldSpec("strings", check=_check_one_root),
        "preferred_chains": FieldSpec("object", obj=CHAIN_PREFERENCE),
        "certificate_lifetime": _refuse(
            "duration", "pyproxy does not ask the CA for a certificate lifetime (order notAfter)"
        ),
        "network_proxy": _refuse("any", "the ACME client connects to the CA directly"),
    },
)
INTERNAL_ISSUER = ObjectSpec(
    "caddytls.InternalIssuer",
    {
        "module": FieldSpec("string"),
        "ca": FieldSpec("string"),
        "lifetime": FieldSpec("duration", check=_check_not_negative),
        "sign_with_root": _refuse(
            "bool", "pyproxy's local CA always signs leaf certificates with its intermediate"
        ),
    },
)
# Current Caddy's `zerossl` (ZeroSSL's own API; acme_client.zerossl_api). 2.6.2's `zerossl` was
# ACME with EAB and had the ACME issuer's fields: those are unknown fields here, as in Caddy.
ZEROSSL_ISSUER = ObjectSpec(
    "caddytls.ZeroSSLIssuer",
    {
        "module": FieldSpec("string"),
        "api_key": FieldSpec("string"),
        "validity_days": FieldSpec("int", check=_check_not_negative_int),
        # certmagic opens its own validation listener there; pyproxy answers ZeroSSL's request
        # on its own servers, so the same rules as the ACME challenges' apply.
        "listen_host": FieldSpec(
            "string",
            honoured="the host must be one pyproxy's servers listen on, where it answers",
            check=_check_bind_host,
        ),
        "alternate_http_port": FieldSpec(
            "int",
            honoured="the port must be one pyproxy listens on, where it answers the validation",
            check=_check_port("ZeroSSL HTTP validation", "alternate_http_port"),
        ),
        "cname_validation": _refuse("object", NO_DNS + " (CNAME validation needs one)"),
    },
)
ISSUERS: Mapping[str, ObjectSpec] = {
    "acme": ACME_ISSUER,
    "zerossl": ZEROSSL_ISSUER,
    "internal": INTERNAL_ISSUER,
}

AUTOMATION_POLICY = ObjectSpec(
    "caddytls.AutomationPolicy",
    {
        "subjects": FieldSpec("strings"),
        "issuers": FieldSpec("issuers"),
        "get_certificate": _refuse(
            "any", "certificate managers (get_certificate) are not implemented"
        ),
        "must_staple": _refuse("bool", "pyproxy does not request Must-Staple certificates"),
        "renewal_window_ratio": FieldSpec("number", check=_check_ratio),
        "key_type": FieldSpec("string", check=_check_key_type),
        "storage": _refuse(
            "any", "a policy's own storage is not implemented; pyproxy uses the top-level storage"
        ),
        "on_demand": _refuse(
            "bool",
            "on-demand TLS is not implemented: pyproxy obtains certificates for the names it "
            "knows when the config loads, not during handshakes",
        ),
        "reuse_private_keys": _refuse(
            "bool", "pyproxy generates a new private key for every certificate"
        ),
        "disable_ocsp_stapling": FieldSpec("bool", honoured=NOT_STAPLED),
        "ocsp_overrides": _refuse("string_map", "pyproxy does not staple OCSP responses"),
    },
)
AUTOMATION = ObjectSpec(
    "caddytls.AutomationConfig",
    {
        "policies": FieldSpec("objects", obj=AUTOMATION_POLICY),
        "on_demand": _refuse(
            "object",
            "on-demand TLS is not implemented: pyproxy obtains certificates for the names it "
            "knows when the config loads, not during handshakes",
        ),
        "ocsp_interval": _refuse("duration", "pyproxy does not staple OCSP responses"),
        "renew_interval": FieldSpec("duration", check=_check_not_negative),
        "storage_clean_interval": _refuse(
            "duration", "pyproxy does not clean expired certificates out of storage"
        ),
    },
)
CERT_KEY_FILE_PAIR = ObjectSpec(
    "caddytls.CertKeyFilePair",
    {
        "certificate": FieldSpec("string"),
        "key": FieldSpec("string"),
        "format": FieldSpec("string"),
        "tags": FieldSpec("strings"),
    },
)
CERT_KEY_PEM_PAIR = ObjectSpec(
    "caddytls.CertKeyPEMPair",
    {"certificate": FieldSpec("string"), "key": FieldSpec("string"), "tags": FieldSpec("strings")},
)
# `certificates` is a module map (namespace tls.certificates): each key is a loader module.
CERTIFICATES = ObjectSpec(
    "caddytls.TLS.certificates",
    {
        "automate": FieldSpec("strings"),
        "load_files": FieldSpec("objects", obj=CERT_KEY_FILE_PAIR),
        "load_pem": FieldSpec("objects", obj=CERT_KEY_PEM_PAIR),
        "load_folders": _refuse(
            "strings", "loading every certificate of a folder is not implemented; use load_files"
        ),
        "load_storage": _refuse(
            "object", "loading certificates from storage is not implemented; use load_files"
        ),
    },
    module_namespace="tls.certificates",
)
STEK_SOURCE = ObjectSpec(
    "caddytls.SessionTicketService.key_source",
    {
        "provider": FieldSpec("string", check=_check_stek_provider),
        # The `distributed` provider's field (distributedstek.Provider).
        "storage": _refuse("any", "only the standard session ticket key provider is supported"),
    },
)
SESSION_TICKETS = ObjectSpec(
    "caddytls.SessionTicketService",
    {
        "key_source": FieldSpec("object", obj=STEK_SOURCE),
        "rotation_interval": FieldSpec("duration", check=_check_not_negative),
        "max_keys": FieldSpec("int", check=_check_max_keys),
        "disable_rotation": FieldSpec("bool"),
        "disabled": FieldSpec("bool"),
    },
)
CERT_CACHE = ObjectSpec(
    "caddytls.CertCacheOptions",
    {
        "capacity": _refuse(
            "int", "pyproxy keeps every certificate it loads; a cache capacity is not implemented"
        ),
    },
)
TLS_APP = ObjectSpec(
    "caddytls.TLS",
    {
        "certificates": FieldSpec("object", obj=CERTIFICATES),
        "automation": FieldSpec("object", obj=AUTOMATION),
        "session_tickets": FieldSpec("object", obj=SESSION_TICKETS),
        "cache": FieldSpec("object", obj=CERT_CACHE),
        "disable_ocsp_stapling": FieldSpec("bool", honoured=NOT_STAPLED),
        "disable_storage_check": FieldSpec(
            "bool", honoured="pyproxy runs no storage check, as true asks"
        ),
        "disable_storage_clean": FieldSpec(
            "bool", honoured="pyproxy never cleans storage, as true asks"
        ),
        "encrypted_client_hello": _refuse(
            "object", "Encrypted Client Hello is not implemented (Python's ssl module has no ECH)"
        ),
        "dns": _refuse("any", NO_DNS),
        "resolvers": _refuse("strings", f"{NO_DNS}, the only user of these resolvers"),
    },
)

# Every object spec, for the audit test.
ALL_SPECS: tuple[ObjectSpec, ...] = (
    TLS_APP,
    CERTIFICATES,
    CERT_KEY_FILE_PAIR,
    CERT_KEY_PEM_PAIR,
    AUTOMATION,
    AUTOMATION_POLICY,
    ACME_ISSUER,
    EAB,
    CHALLENGES,
    HTTP_CHALLENGE,
    TLSALPN_CHALLENGE,
    CHAIN_PREFERENCE,
    INTERNAL_ISSUER,
    ZEROSSL_ISSUER,
    SESSION_TICKETS,
    STEK_SOURCE,
    CERT_CACHE,
)

# `@id` is allowed everywhere, as Caddy strips it (caddy.RemoveMetaFields) before decoding.
_META_FIELDS = frozenset({"@id"})


# ---- the walk ---------------------------------------------------------------------------------


def check_tls_app(config: Mapping[str, Any]) -> None:
    """Check `apps.tls` of a whole Caddy JSON config; raise ConfigError naming the JSON path."""
    apps = config.get("apps")
    if not isinstance(apps, Mapping) or apps.get("tls") is None:
        return
    check_object(apps["tls"], "apps.tls", TLS_APP, Listeners.of_config(config))


def check_object(value: Any, where: str, spec: ObjectSpec, listeners: Listeners) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected an object, got {_kind(value)}")
    for key, item in value.items():
        if key in _META_FIELDS:
            continue
        field_spec = spec.fields.get(key)
        if field_spec is None:
            if spec.module_namespace:
                raise ConfigError(f"{where}.{key}: unknown module: {spec.module_namespace}.{key}")
            raise ConfigError(f'{where}: json: unknown field "{key}"')
        if item is None:
            continue  # JSON null decodes to Go's zero value: the field is unset
        path = f"{where}.{key}"
        _check_field(item, path, field_spec, listeners)


def _check_field(value: Any, where: str, spec: FieldSpec, listeners: Listeners) -> None:
    _check_type(value, where, spec, listeners)
    if spec.refused and not _is_zero(value):
        raise ConfigError(f"{where}: not supported by pyproxy: {spec.refused}")
    if spec.check is not None:
        spec.check(value, where, listeners)


def _check_type(value: Any, where: str, spec: FieldSpec, listeners: Listeners) -> None:
    kind = spec.kind
    if kind == "string":
        _expect(isinstance(value, str), value, where, "a string")
    elif kind == "bool":
        _expect(isinstance(value, bool), value, where, "true or false")
    elif kind == "int":
        _expect(isinstance(value, int) and not isinstance(value, bool), value, where, "an integer")
    elif kind == "number":
        _expect(
            isinstance(value, int | float) and not isinstance(value, bool), value, where, "a number"
        )
    elif kind == "duration":
        parse_duration(value, where)
    elif kind == "strings":
        _expect(isinstance(value, list), value, where, "an array")
        for i, item in enumerate(value):
            _expect(isinstance(item, str), item, f"{where}[{i}]", "a string")
    elif kind == "string_map":
        _expect(isinstance(value, Mapping), value, where, "an object")
        for key, item in value.items():
            _expect(isinstance(item, str), item, f"{where}.{key}", "a string")
    elif kind == "object":
        if spec.obj is not None and not spec.refused:
            check_object(value, where, spec.obj, listeners)
        else:
            _expect(isinstance(value, Mapping), value, where, "an object")
    elif kind == "objects":
        _expect(isinstance(value, list), value, where, "an array")
        if spec.obj is not None:
            for i, item in enumerate(value):
                check_object(item, f"{where}[{i}]", spec.obj, listeners)
    elif kind == "issuers":
        _expect(isinstance(value, list), value, where, "an array")
        for i, item in enumerate(value):
            _check_issuer(item, f"{where}[{i}]", listeners)
    elif kind != "any":
        raise AssertionError(f"unknown field kind {kind!r}")


def _check_issuer(value: Any, where: str, listeners: Listeners) -> None:
    _expect(isinstance(value, Mapping), value, where, "an object")
    spec = ISSUERS.get(value.get("module"))
    if spec is not None:  # other modules: refused by proxy.certs.check_issuer_modules
        check_object(value, where, spec, listeners)


def _is_zero(value: Any) -> bool:
    """Go's zero value of the field's type: a field `omitempty` leaves out, Caddy's default."""
    return value is False or (not isinstance(value, bool) and value in (0, "", [], {}))


def _expect(ok: bool, value: Any, where: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: expected {expected}, got {_kind(value)}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


__all__ = [
    "ALL_SPECS",
    "ISSUERS",
    "KEY_TYPES",
    "TLS_APP",
    "FieldSpec",
    "Listeners",
    "ObjectSpec",
    "check_object",
    "check_tls_app",
]
