"""The certificates of one worker process: what Caddy's TLS app does beside the servers.

Design: ACME is managed once per node, by the supervisor (proxy.node_certs, one
`CertificateManager` per issuer list): one order per name however many workers serve, retries
on one schedule, one log line per step. The workers never talk to a CA. Each worker

- serves manually loaded certificates (`apps.tls.certificates.load_files` / `load_pem`), and
  reloads `load_files` certificates when their files change on disk (a half-written or
  mismatched pair keeps the old certificate in service until the pair is complete);
- gets local-CA leaves for internal names (`tls internal`, `localhost`, IPs, ...) and renews
  them when a third of their 12 h lifetime remains (no CA to contact: storage locks make one
  worker sign and the others load it; the CA's `obtain` reuses a fresh stored leaf);
- serves the ACME certificates in storage: at start, whenever the supervisor says one changed
  (`refresh_from_storage`), and on a short poll (so a renewal by another node sharing the storage
  shows up too);
- answers HTTP-01 requests from the challenge tokens in storage (any instance sharing storage
  answers, as certmagic's distributed solver does), for the node's orders and other nodes'.

`prepare_certificates(config)` runs once before the workers fork (file errors are startup errors
naming the file) and yields the automatic-HTTPS plan whose adjusted config the engine serves;
`CertRuntime(setup)` is then built inside each worker's event loop; `acme_groups(setup)` is what
both the workers and the supervisor's managers read the ACME names from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from acme_client.certificates import (
    DEFAULT_RENEWAL_WINDOW_RATIO,
    CertificateError,
    LoadedCertificate,
    find_stored_certificate,
    load_pem_files,
    normalize_host,
    parse_pem_pair,
    renewal_due,
)
from acme_client.http01 import TLS_ALPN01, is_http01_path, is_pki_validation_path
from acme_client.http01 import answer_http01 as _answer_http01
from acme_client.http01 import answer_pki_validation as _answer_pki_validation
from acme_client.issuer import (
    IssuerConfigError,
    check_issuer_challenges,
    issuer_config_from_caddy,
)
from acme_client.local_ca import LocalCA
from acme_client.manager import NODE_STATE, CertStatus, IssuerSettings, stored_status
from acme_client.redis_storage import (
    RedisConfigError,
    RedisStorage,
    RedisStorageConfig,
    close_storage,
    parse_redis_storage_config,
)
from acme_client.schedule import DEFAULT_RENEW_INTERVAL_S
from acme_client.storage import (
    LOCAL_ISSUER_KEY,
    FileStorage,
    Storage,
    default_storage_root,
    site_cert_key,
    site_meta_key,
)
from acme_client.tls_alpn import ChallengeCertificate, challenge_certificate, find_tls_alpn01
from acme_client.zerossl_api import zerossl_config_from_caddy
from config.auto_https import AutoHTTPSPlan, ManagedName, plan_automatic_https
from config.errors import ConfigError
from config.model import parse_duration
from config.tls_app_fields import check_tls_app
from proxy import libssl
from proxy.placeholders import replace_global
from proxy.tls import (
    CertificateStore,
    SNISelector,
    TLSConfigError,
    selector_for_server,
    tls_alpn_servable,
)

log = logging.getLogger("pyproxy.certs")

# How often files, the local CA and storage are checked. Short enough that a certificate
# replaced on disk is served within seconds; each check is a few stat() calls.
MAINTENANCE_INTERVAL_S = 2.0
# Local-CA leaves (12 h) and the intermediate (7 d) need no faster checks than this.
LOCAL_CA_CHECK_INTERVAL_S = 60.0


# ---- setup before forking -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManualCertificate:
    """A certificate from `load_files` (with its paths, so changes on disk are noticed) or
    `load_pem` (paths None)."""

    cert: LoadedCertificate
    cert_path: str | None = None
    key_path: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CertSetup:
    """Everything decided once per config: the plan, the manual certificates, the storage."""

    plan: AutoHTTPSPlan
    manual: tuple[ManualCertificate, ...]
    storage_root: Path
    # `{"module": "redis"}` storage; None for the file system at `storage_root`.
    redis_storage: RedisStorageConfig | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The config the engine serves (redirect servers and TLS policies added)."""
        return self.plan.config

    def storage_identity(self) -> str:
        """Which storage this is: two setups with one identity share certificates and locks."""
        if self.redis_storage is not None:
            return self.redis_storage.describe()
        return str(self.storage_root)

    def open_storage(self) -> Storage:
        """A client of the configured storage (each caller owns the one it opens)."""
        if self.redis_storage is not None:
            return RedisStorage.from_config(self.redis_storage)
        return FileStorage(self.storage_root)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def storage_root_from_config(config: Mapping[str, Any]) -> Path:
    """The top-level `storage` (`{"module": "file_system", "root": ...}`), else Caddy's default.

    A `redis` storage keeps nothing on disk; its root is Caddy's default data directory.
    """
    storage = config.get("storage")
    if not storage:
        return default_storage_root()
    if not isinstance(storage, Mapping):
        raise ConfigError("storage: expected an object")
    module = storage.get("module")
    if module == "redis":
        return default_storage_root()
    if module != "file_system":
        raise ConfigError(f"storage: module not supported: {module!r} (only file_system, redis)")
    root = storage.get("root")
    if not root:
        return default_storage_root()
    if not isinstance(root, str):
        raise ConfigError("storage.root: expected a string")
    return Path(root)


def redis_storage_from_config(config: Mapping[str, Any]) -> RedisStorageConfig | None:
    """The `{"module": "redis", ...}` storage (caddy-storage-redis's fields), else None."""
    storage = config.get("storage")
    if not isinstance(storage, Mapping) or storage.get("module") != "redis":
        return None
    try:
        return parse_redis_storage_config(storage, "storage", replace_global)
    except RedisConfigError as exc:
        raise ConfigError(str(exc)) from exc


def load_manual_certificates(tls_app: Mapping[str, Any]) -> list[ManualCertificate]:
    """`apps.tls.certificates.load_files` and `load_pem`; errors name the file (or entry)."""
    certs = _obj(tls_app.get("certificates"))
    out: list[ManualCertificate] = []
    for i, entry in enumerate(_list(certs.get("load_files"))):
        where = f"apps.tls.certificates.load_files[{i}]"
        doc = _obj(entry)
        cert_path, key_path = doc.get("certificate"), doc.get("key")
        if not isinstance(cert_path, str) or not isinstance(key_path, str):
            raise ConfigError(f"{where}: certificate and key file names are required")
        fmt = doc.get("format") or "pem"
        if fmt != "pem":
            raise ConfigError(f"{where}.format: unrecognized certificate/key encoding: {fmt}")
        tags = tuple(t for t in _list(doc.get("tags")) if isinstance(t, str))
        out.append(
            ManualCertificate(load_pem_files(cert_path, key_path), cert_path, key_path, tags)
        )
    for i, entry in enumerate(_list(certs.get("load_pem"))):
        where = f"apps.tls.certificates.load_pem[{i}]"
        doc = _obj(entry)
        cert_pem, key_pem = doc.get("certificate"), doc.get("key")
        if not isinstance(cert_pem, str) or not isinstance(key_pem, str):
            raise ConfigError(f"{where}: certificate and key PEM are required")
        tags = tuple(t for t in _list(doc.get("tags")) if isinstance(t, str))
        cert = parse_pem_pair(
            cert_pem.encode(), key_pem.encode(), cert_label=where, key_label=f"{where}.key"
        )
        out.append(ManualCertificate(cert, tags=tags))
    return out


def prepare_certificates(config: Mapping[str, Any]) -> CertSetup:
    """Load manual certificates, then plan automatic HTTPS around the names they cover.

    Raises ConfigError or CertificateError (both name the file or config path) for startup.
    """
    tls_app = _obj(_obj(config.get("apps")).get("tls"))
    check_issuer_modules(tls_app)
    check_tls_app(config)
    try:
        manual = load_manual_certificates(tls_app)
    except CertificateError as exc:
        raise ConfigError(str(exc)) from exc
    now = datetime.now(UTC)
    for m in manual:
        if m.cert.expired(now):
            # Caddy serves it anyway (clients will reject it); say so loudly at startup.
            log.warning(
                "%s: certificate expired on %s; replace it",
                m.cert.source,
                m.cert.not_after,
                extra=NODE_STATE,
            )
    loaded_names = sorted({n for m in manual for n in m.cert.names})
    plan = plan_automatic_https(config, loaded_names=loaded_names, env=os.environ)
    for warning in plan.warnings:
        log.warning("automatic HTTPS: %s", warning, extra=NODE_STATE)
    return CertSetup(
        plan=plan,
        manual=tuple(manual),
        storage_root=storage_root_from_config(config),
        redis_storage=redis_storage_from_config(config),
    )


# ---- issuers ----------------------------------------------------------------------------------


def _issuer_group_key(managed: ManagedName) -> str:
    return json.dumps([dict(i) for i in managed.issuers], sort_keys=True)


def _policy(tls_app: Mapping[str, Any], index: int | None) -> dict[str, Any]:
    policies = _list(_obj(tls_app.get("automation")).get("policies"))
    if index is None or not 0 <= index < len(policies):
        return {}
    return _obj(policies[index])


# The issuer modules pyproxy runs: `acme` (acme_client.issuer), `zerossl` (ZeroSSL's API,
# acme_client.zerossl_api) and `internal` (the local CA).
SUPPORTED_ISSUER_MODULES = ("acme", "zerossl", "internal")


def check_issuer_modules(tls_app: Mapping[str, Any]) -> None:
    """Refuse every automation policy issuer whose module pyproxy cannot run.

    Caddy provisions each policy's issuers at load and an unknown module fails the load; an
    issuer pyproxy cannot run must fail the same way (validate, run, admin /load), not be skipped
    while the name falls to another issuer. `zerossl` is current Caddy's: ZeroSSL's own
    (non-ACME) API with an `api_key`, which pyproxy requires here (Caddy would fail each order
    instead); 2.6.2's `zerossl` was ACME with EAB, written `acme` with ZeroSSL's CA now.
    """
    for p_index, policy in enumerate(_list(_obj(tls_app.get("automation")).get("policies"))):
        for i_index, issuer in enumerate(_list(_obj(policy).get("issuers"))):
            module = _obj(issuer).get("module")
            where = f"apps.tls.automation.policies[{p_index}].issuers[{i_index}].module"
            if module in SUPPORTED_ISSUER_MODULES:
                try:
                    servable = tls_alpn_servable()
                    check_issuer_challenges(
                        _obj(issuer), where[: -len(".module")], tls_alpn_servable=servable
                    )
                except IssuerConfigError as exc:
                    raise ConfigError(str(exc)) from exc
                api_key = _obj(issuer).get("api_key")
                if module == "zerossl" and not (isinstance(api_key, str) and api_key.strip()):
                    raise ConfigError(
                        f"{where[: -len('.module')]}.api_key: the zerossl issuer requires the"
                        " API key of a ZeroSSL account"
                    )
                continue
            if module is None:
                raise ConfigError(
                    f"{where}: issuer module name is required (acme, zerossl or internal)"
                )
            raise ConfigError(
                f"{where}: issuer module {module!r} is not supported by pyproxy"
                f" (supported: {', '.join(SUPPORTED_ISSUER_MODULES)})"
            )


def acme_issuer_configs(
    managed: ManagedName, tls_app: Mapping[str, Any]
) -> tuple[IssuerSettings, ...]:
    """The CA issuers of a managed name, in order: ACME ones and ZeroSSL's API (`internal`
    ones are the local CA's).

    Any other module was refused by `check_issuer_modules` when the config was prepared.
    """
    policy = _policy(tls_app, managed.policy_index)
    key_type = policy.get("key_type") if isinstance(policy.get("key_type"), str) else None
    configs: list[IssuerSettings] = []
    for issuer in managed.issuers:
        zerossl = zerossl_config_from_caddy(
            issuer, key_type=key_type, env=os.environ, replace=replace_global
        )
        if zerossl is not None:
            configs.append(zerossl)
            continue
        cfg = issuer_config_from_caddy(issuer, key_type=key_type)
        if cfg is not None and TLS_ALPN01 in cfg.challenge_types and not tls_alpn_servable():
            # Only HTTP-01 can be answered here (see proxy.tls); tls-alpn-only was refused.
            _warn_no_tls_alpn()
            types = tuple(t for t in cfg.challenge_types if t != TLS_ALPN01)
            cfg = dataclasses.replace(cfg, challenge_types=types)
        if cfg is not None:
            configs.append(cfg)
    return tuple(configs)


@functools.lru_cache(maxsize=1)
def _warn_no_tls_alpn() -> None:
    log.warning(
        "TLS-ALPN-01 challenges cannot be answered (%s); using HTTP-01 only",
        libssl.unavailable_reason(),
    )


def _renew_interval_s(tls_app: Mapping[str, Any]) -> float:
    value = _obj(tls_app.get("automation")).get("renew_interval")
    if value is None:
        return DEFAULT_RENEW_INTERVAL_S
    seconds = parse_duration(value, "apps.tls.automation.renew_interval")
    return seconds if seconds > 0 else DEFAULT_RENEW_INTERVAL_S


def _renewal_ratio(policy: Mapping[str, Any]) -> float:
    value = policy.get("renewal_window_ratio")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    return DEFAULT_RENEWAL_WINDOW_RATIO


# ---- the per-worker runtime -------------------------------------------------------------------


# An outage is said once a minute per storage, not on every poll of every name.
STORAGE_WARNING_INTERVAL_S = 60.0
_storage_warned_at: dict[str, float] = {}


def _warn_storage_unavailable(storage: Storage, exc: OSError) -> None:
    where = storage.label("")
    now = time.monotonic()
    last = _storage_warned_at.get(where)
    if last is not None and now - last < STORAGE_WARNING_INTERVAL_S:
        return
    _storage_warned_at[where] = now
    log.warning("storage unavailable, serving what is in memory: %s", exc, extra=NODE_STATE)


def _stored_key_signature(storage: Storage, key: str) -> tuple[datetime, int] | None:
    try:
        info = storage.stat(key)
    except FileNotFoundError:
        return None
    return (info.modified, info.size)


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(slots=True)
class _WatchedFiles:
    """A `load_files` certificate in service and the file state it was loaded from."""

    cert_path: str
    key_path: str
    cert: LoadedCertificate
    names: tuple[str, ...]
    signature: tuple[Any, ...]
    last_error: str | None = None


@dataclass(slots=True)
class AcmeGroup:
    """Names sharing one issuer list: the node runs one CertificateManager for them."""

    key: str
    issuers: tuple[IssuerSettings, ...]
    names: list[str]
    renewal_ratio: float


@dataclass(frozen=True, slots=True)
class AcmePlan:
    """The ACME side of a config: groups of names, and names no issuer can serve (why)."""

    groups: tuple[AcmeGroup, ...]
    unsupported: Mapping[str, str]
    renew_interval_s: float


def acme_plan(setup: CertSetup) -> AcmePlan:
    """Group the config's ACME names by issuer list (Caddy: one automation policy's issuers)."""
    tls_app = _obj(_obj(setup.config.get("apps")).get("tls"))
    groups: dict[str, AcmeGroup] = {}
    unsupported: dict[str, str] = {}
    for managed in setup.plan.managed:
        if managed.internal:
            continue
        issuers = acme_issuer_configs(managed, tls_app)
        if not issuers:
            unsupported[managed.name] = "no supported ACME issuer"
            continue
        key = _issuer_group_key(managed)
        group = groups.get(key)
        if group is None:
            policy = _policy(tls_app, managed.policy_index)
            group = groups[key] = AcmeGroup(key, issuers, [], _renewal_ratio(policy))
        group.names.append(managed.name)
    return AcmePlan(tuple(groups.values()), unsupported, _renew_interval_s(tls_app))


@dataclass(slots=True)
class _InternalName:
    name: str
    ca: LocalCA
    last_error: str | None = None


def split_host_port(host: str) -> str:
    """Host header without its port; IPv6 brackets removed (`[::1]:80` -> `::1`)."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


class CertRuntime:
    """One worker's certificates; see the module docstring. Call `start()` inside the loop."""

    def __init__(
        self,
        setup: CertSetup,
        *,
        maintenance_interval_s: float = MAINTENANCE_INTERVAL_S,
        local_ca_check_interval_s: float = LOCAL_CA_CHECK_INTERVAL_S,
    ) -> None:
        self.setup = setup
        self.maintenance_interval_s = maintenance_interval_s
        self.local_ca_check_interval_s = local_ca_check_interval_s
        self.store = CertificateStore.from_tls_app(self.tls_app)
        self.storage = setup.open_storage()
        self.selectors: dict[str, SNISelector] = {}
        self._watched: list[_WatchedFiles] = []
        self._internal: list[_InternalName] = []
        self._local_cas: dict[str, LocalCA] = {}
        self._acme: tuple[AcmeGroup, ...] = ()
        self._stored_sigs: dict[str, tuple[Any, ...]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ticket_rotation: asyncio.Task[None] | None = None
        self._last_local_check = 0.0

    @property
    def tls_app(self) -> dict[str, Any]:
        return _obj(_obj(self.setup.config.get("apps")).get("tls"))

    @property
    def plan(self) -> AutoHTTPSPlan:
        return self.setup.plan

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fill the store (manual, local CA, stored ACME) and start the upkeep.

        Returns once every certificate that can be had without a CA is in the store; ACME
        certificates not yet in storage arrive when the node's manager stored them.
        """
        self._install_manual()
        await asyncio.to_thread(self._install_internal)
        self._plan_acme()
        await asyncio.to_thread(self._install_stored_acme)
        self._last_local_check = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._maintain_forever(), name="cert-maintenance")
        keys = self.store.ticket_keys
        if keys is not None and keys.settings.rotate:
            self._ticket_rotation = asyncio.create_task(
                keys.rotate_forever(), name="ticket-key-rotation"
            )

    async def stop(self) -> None:
        for task in (self._task, self._ticket_rotation):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._ticket_rotation = None
        # This generation's storage client (opened in __init__): a worker builds a CertRuntime
        # per config, so each reload would otherwise leave its Redis connections open.
        with contextlib.suppress(Exception):
            await asyncio.to_thread(close_storage, self.storage)

    async def refresh_from_storage(self) -> None:
        """The supervisor stored a certificate: serve it now rather than at the next poll."""
        await asyncio.to_thread(self._poll_storage)

    # -- the engine's seams ---------------------------------------------------------------------

    def tls_provider(self, name: str, _server: Any = None) -> Any:
        """`proxy.app`'s seam: the listener SSLContext of server `name`, None for plain HTTP."""
        servers = _obj(_obj(_obj(self.setup.config.get("apps")).get("http")).get("servers"))
        server_json = _obj(servers.get(name))
        try:
            selector = selector_for_server(
                self.store,
                server_json,
                name,
                # No ACME name, no challenge to answer: no ClientHello callback either.
                acme_challenge=self.tls_alpn_challenge if self._acme else None,
            )
        except TLSConfigError as exc:
            raise ConfigError(str(exc)) from exc
        if selector is None:
            return None
        self.selectors[name] = selector
        return selector.server_context()

    def handshake_check(self, name: str) -> Callable[[Any], bool] | None:
        """For server `name`: the post-handshake check of the chosen policy's protocol range,
        or None when the server's policies share one range (then it always passes)."""
        selector = self.selectors.get(name)
        # With one protocol range the check always passes: skip the per-connection wrapper.
        if selector is None or selector._uniform_protocols:
            return None
        return selector.handshake_allowed

    def intercept_http01(self, ex: Any) -> bool:
        """Answer an HTTP-01 challenge or a ZeroSSL HTTP validation on a plain-HTTP server
        before any route (Caddy's HandleHTTPChallenge); True when answered. Challenges that are
        not ours fall through to the routes (ServerRuntime.intercept)."""
        req = ex.req
        if req.method != "GET":
            return False
        if is_http01_path(req.path):
            body = self.answer_http01(req.host, req.path)
            if body is not None:
                ex.respond(200, [("Content-Type", "text/plain")], body)
                return True
        elif is_pki_validation_path(req.path):
            answer = self.answer_pki_validation(req.host, req.path)
            if answer is not None:
                status, body = answer
                headers = [("Content-Type", "text/plain")] if status == 200 else []
                ex.respond(status, headers, body)
                return True
        return False

    def answer_pki_validation(self, host: str, path: str) -> tuple[int, bytes] | None:
        """(status, body) for `/.well-known/pki-validation/<file>` (ZeroSSL's API), or None.

        From storage, whichever issuer policy the host has (Caddy looks only at the zerossl
        issuers of the host's policy; like HTTP-01 here, the stored data decides)."""
        try:
            return _answer_pki_validation(self.storage, split_host_port(host), path)
        except (OSError, ValueError) as exc:
            log.warning("%s: answering ZeroSSL HTTP validation: %s", host, exc)
            return None

    def answer_http01(self, host: str, path: str) -> bytes | None:
        """The key authorization for `/.well-known/acme-challenge/<token>`, or None."""
        if not is_http01_path(path):
            return None
        try:
            return _answer_http01(self.storage, split_host_port(host), path)
        except (OSError, ValueError) as exc:
            log.warning("%s: answering HTTP-01 challenge: %s", host, exc)
            return None

    def tls_alpn_challenge(self, server_name: str) -> ChallengeCertificate | None:
        """The TLS-ALPN-01 challenge certificate for an SNI name, from storage (any issuer)."""
        try:
            challenge = find_tls_alpn01(self.storage, server_name)
        except (OSError, ValueError) as exc:
            log.warning("%s: reading the tls-alpn-01 challenge: %s", server_name, exc)
            return None
        if challenge is None:
            return None
        return challenge_certificate(challenge.domain or server_name, challenge.key_authorization)

    def status(self) -> list[dict[str, Any]]:
        """The certificates this worker obtains itself (local CA) or loads from files, for the
        operator; ACME names are the node's (proxy.node_certs reports them)."""
        out: list[dict[str, Any]] = []
        for item in self._internal:
            cert = self.store.get(item.name)
            st = CertStatus(name=item.name, issuer=item.ca.issuer_key)
            if cert is not None:
                st.state, st.not_after = "valid", cert.not_after
                st.next_renewal = _renewal_moment(cert, DEFAULT_RENEWAL_WINDOW_RATIO)
            else:
                st.state = "failed" if item.last_error else "pending"
            st.last_error = item.last_error
            out.append(st.to_json())
        for watched in self._watched:
            for name in watched.names:
                out.append(
                    {
                        "name": name,
                        "issuer": "file",
                        "state": "valid",
                        "not_after": watched.cert.not_after.isoformat(),
                        "source": watched.cert_path,
                        "last_error": watched.last_error,
                    }
                )
        return out

    # -- filling the store ----------------------------------------------------------------------

    def _install_manual(self) -> None:
        for manual in self.setup.manual:
            names = self.store.add(manual.cert)
            if manual.cert_path is not None and manual.key_path is not None:
                self._watched.append(
                    _WatchedFiles(
                        manual.cert_path,
                        manual.key_path,
                        manual.cert,
                        names,
                        self._pair_signature(manual.cert_path, manual.key_path),
                    )
                )

    @staticmethod
    def _pair_signature(cert_path: str, key_path: str) -> tuple[Any, ...]:
        return (_file_signature(cert_path), _file_signature(key_path))

    def _local_ca(self, issuer: Mapping[str, Any]) -> LocalCA:
        ca_id = _ca_id(issuer)
        ca = self._local_cas.get(ca_id)
        if ca is None:
            kwargs: dict[str, Any] = {}
            lifetime = issuer.get("lifetime")
            if lifetime is not None:
                seconds = parse_duration(lifetime, "internal issuer lifetime")
                if seconds > 0:
                    kwargs["leaf_lifetime"] = timedelta(seconds=seconds)
            ca = LocalCA(self.storage, ca_id=ca_id, **kwargs)
            ca.provision()
            self._local_cas[ca_id] = ca
        return ca

    def _install_internal(self) -> None:
        """Blocking (storage, locks, key generation): run in a thread."""
        for managed in self.plan.managed:
            if not managed.internal:
                continue
            issuer = next((i for i in managed.issuers if i.get("module") == "internal"), {})
            try:
                item = _InternalName(managed.name, self._local_ca(issuer))
            except Exception as exc:  # a broken CA must not stop the other names
                log.error("%s: local CA: %s", managed.name, exc)
                continue
            self._internal.append(item)
            self._obtain_internal(item)

    def _obtain_internal(self, item: _InternalName) -> None:
        try:
            cert = item.ca.obtain([item.name])
            current = self.store.get(item.name)
            if current is None or current.certificate_pem != cert.certificate_pem:
                self.store.add(cert, [item.name])
                log.info(
                    "%s: local CA certificate in service (expires %s)",
                    item.name,
                    cert.not_after.isoformat(),
                    extra=NODE_STATE,
                )
            item.last_error = None
        except Exception as exc:
            item.last_error = f"obtaining certificate: {exc}"
            log.error("%s: %s", item.name, item.last_error)

    def _plan_acme(self) -> None:
        self._acme = acme_plan(self.setup).groups

    def _install_stored_acme(self) -> None:
        """Serve stored ACME certificates before listening (the manager re-installs them)."""
        now = datetime.now(UTC)
        for group in self._acme:
            keys = [c.issuer_key for c in group.issuers]
            for name in group.names:
                self._stored_sigs[name] = self._stored_signature(name, keys)
                try:
                    cert = find_stored_certificate(self.storage, name, keys)
                except CertificateError as exc:
                    log.error("%s: stored certificate unusable: %s", name, exc)
                    continue
                if cert is not None and not cert.expired(now):
                    self._add_quietly(name, cert)

    def _add_quietly(self, name: str, cert: LoadedCertificate) -> None:
        current = self.store.get(name)
        if current is not None and current.certificate_pem == cert.certificate_pem:
            return
        try:
            self.store.add(cert, [name])
        except CertificateError as exc:
            log.error("%s: %s", name, exc)

    def _on_certificate(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        current = self.store.get(name)
        if current is not None and current.certificate_pem == cert_pem:
            return
        self.store.replace(name, cert_pem, key_pem)

    # -- upkeep ---------------------------------------------------------------------------------

    async def _maintain_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.maintenance_interval_s)
            try:
                self._check_files()
                await asyncio.to_thread(self._poll_storage)
                if loop.time() - self._last_local_check >= self.local_ca_check_interval_s:
                    self._last_local_check = loop.time()
                    await asyncio.to_thread(self._maintain_local)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("certificate maintenance failed")

    def maintain_now(self) -> None:
        """One blocking maintenance round (tests; the loop runs this in steps)."""
        self._check_files()
        self._poll_storage()
        self._maintain_local()

    def _check_files(self) -> None:
        """Reload `tls cert key` files that changed; keep the old pair while the new is bad."""
        for watched in self._watched:
            signature = self._pair_signature(watched.cert_path, watched.key_path)
            if signature == watched.signature:
                continue
            try:
                cert = load_pem_files(watched.cert_path, watched.key_path)
                names = self.store.add(cert)
            except CertificateError as exc:
                # Often a swap in progress (certificate written, key not yet): retry next round.
                if watched.last_error != str(exc):
                    log.warning("%s; keeping the certificate in service", exc)
                watched.last_error = str(exc)
                continue
            for stale in set(watched.names) - set(names):
                if self.store.get(stale) is watched.cert:
                    self.store.remove(stale)
            watched.cert, watched.names, watched.signature = cert, names, signature
            watched.last_error = None
            log.info(
                "%s: certificate reloaded from disk (%s)",
                watched.cert_path,
                ", ".join(names),
                extra=NODE_STATE,
            )

    def _stored_signature(self, name: str, issuer_keys: Sequence[str]) -> tuple[Any, ...]:
        # Storage-neutral change detection (file system or Redis): the certificate's modified
        # time and size. A storage that cannot be read now (Redis down) counts as "unchanged":
        # what is in service keeps serving and the next poll looks again.
        # The metadata is part of it: the manager stores key, certificate, then metadata
        # (certmagic's order), so a poll between the last two sees an incomplete resource, and
        # only the metadata's arrival tells the next poll to look again.
        host = normalize_host(name)
        try:
            return tuple(
                _stored_key_signature(self.storage, key)
                for k in issuer_keys
                for key in (site_cert_key(k, host), site_meta_key(k, host))
            )
        except OSError as exc:
            _warn_storage_unavailable(self.storage, exc)
            return self._stored_sigs.get(name, ())

    def _poll_storage(self) -> None:
        """Install ACME certificates another worker or node stored since we last looked."""
        now = datetime.now(UTC)
        for group in self._acme:
            keys = [c.issuer_key for c in group.issuers]
            for name in group.names:
                signature = self._stored_signature(name, keys)
                if signature == self._stored_sigs.get(name):
                    continue
                self._stored_sigs[name] = signature
                try:
                    cert = find_stored_certificate(self.storage, name, keys)
                except CertificateError as exc:
                    log.warning("%s: stored certificate unusable: %s", name, exc)
                    continue
                if cert is None or cert.expired(now):
                    continue
                current = self.store.get(name)
                # The newest wins (certmagic); never go back to an older stored certificate.
                if current is None or (cert.not_before, cert.not_after) >= (
                    current.not_before,
                    current.not_after,
                ):
                    self._add_quietly(name, cert)
                    # Debug only: the node's manager already said "certificate in service".
                    log.debug("%s: certificate from storage in service", name, extra=NODE_STATE)

    def _maintain_local(self) -> None:
        """Renew the local CA's intermediate and leaves in their renewal window."""
        for ca in self._local_cas.values():
            try:
                ca.maintain()
            except Exception as exc:
                log.error("local CA %s: maintenance: %s", ca.ca_id, exc)
        now = datetime.now(UTC)
        for item in self._internal:
            cert = self.store.get(item.name)
            if cert is None or renewal_due(cert.leaf, now) or not item.ca.chains_to_root(cert):
                self._obtain_internal(item)


def _ca_id(issuer: Mapping[str, Any]) -> str:
    """The local CA an `internal` issuer uses (Caddy's default CA id is `local`)."""
    ca = issuer.get("ca")
    return ca if isinstance(ca, str) and ca else LOCAL_ISSUER_KEY


def _renewal_moment(cert: LoadedCertificate, ratio: float) -> datetime:
    lifetime = cert.not_after - cert.not_before
    return cert.not_after - lifetime * ratio


# ---- closing connections that fail the policy check --------------------------------------------


class _HandshakeGate(asyncio.Protocol):
    """Wraps a connection protocol: after the TLS handshake, connections whose negotiated
    version the chosen policy does not allow are closed before the protocol sees them."""

    __slots__ = ("_check", "_inner", "_passed")

    def __init__(self, inner: asyncio.Protocol, check: Callable[[Any], bool]) -> None:
        self._inner = inner
        self._check = check
        self._passed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None and not self._check(ssl_obj):
            log.debug("closing connection: TLS version not allowed by the site's policy")
            # abort: nothing to flush, the client must not get an HTTP exchange.
            abort = getattr(transport, "abort", None) or transport.close
            abort()
            return
        self._passed = True
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._passed:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def gate_protocol_factory(
    factory: Callable[[], asyncio.Protocol], check: Callable[[Any], bool] | None
) -> Callable[[], asyncio.Protocol]:
    """`factory` unchanged when there is nothing to check, else gated by `check`."""
    if check is None:
        return factory
    return lambda: _HandshakeGate(factory(), check)


# ---- storage-only status (`pyproxy certs`) ------------------------------------------------------


def certificate_status(setup: CertSetup) -> list[CertStatus]:
    """Managed names with issuer, expiry, next renewal (from storage alone, no CA contact)."""
    storage = setup.open_storage()
    try:
        return _certificate_status(setup, storage)
    finally:
        close_storage(storage)


def _certificate_status(setup: CertSetup, storage: Storage) -> list[CertStatus]:
    tls_app = _obj(_obj(setup.config.get("apps")).get("tls"))
    interval_s = _renew_interval_s(tls_app)
    out: list[CertStatus] = []
    for managed in setup.plan.managed:
        ratio = _renewal_ratio(_policy(tls_app, managed.policy_index))
        if not managed.internal:
            issuers = acme_issuer_configs(managed, tls_app)
            if not issuers:
                out.append(
                    CertStatus(managed.name, state="failed", last_error="no supported issuer")
                )
                continue
            for status in stored_status(
                storage,
                [managed.name],
                issuers,
                renew_interval_s=interval_s,
                renewal_window_ratio=ratio,
            ):
                # Nothing stored yet: name the issuer that will be asked.
                status.issuer = status.issuer or issuers[0].issuer_key
                out.append(status)
            continue
        issuer = next((i for i in managed.issuers if i.get("module") == "internal"), {})
        ca_id = _ca_id(issuer)
        status = CertStatus(normalize_host(managed.name), issuer=ca_id, state="missing")
        try:
            cert = find_stored_certificate(storage, managed.name, [ca_id])
        except CertificateError as exc:
            status.state, status.last_error = "unusable", str(exc)
            cert = None
        if cert is not None:
            status.not_after = cert.not_after
            status.state = "expired" if cert.expired(datetime.now(UTC)) else "valid"
            status.next_renewal = _renewal_moment(cert, ratio)
        out.append(status)
    return out
