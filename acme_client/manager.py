"""The certificate manager: keeps one ACME certificate per site name obtained and renewed.

This module owns the lifecycle certmagic runs for Caddy's automatic HTTPS, as asyncio tasks
beside the server (which is already serving other names meanwhile):

- one job per site name (Caddy orders one certificate per name); on start and on reload every
  name without a usable stored certificate gets one, asynchronously;
- stored certificates and the stored account are reused: a restart places no new order;
- a storage lock `issue_cert_<name>` around every order, with a re-check of storage once the lock
  is ours, so instances sharing storage never order the same certificate twice;
- renewal checked every `renew_interval_s` (default 10 min) with `acme_client.schedule`'s rules
  (ratio, ARI when the CA offers `renewalInfo`, emergency windows); renewal orders name the old
  certificate in `replaces` when the CA supports ARI;
- failures retry on certmagic's schedule (1 m ... 6 h, 30 days) with jitter, never before the
  CA's Retry-After; after a failure against Let's Encrypt production, the next attempt is first
  tried against LE staging (certmagic does this to spare production rate limits); a failed
  renewal never touches the certificate in storage or in service;
- the retry state is stored per name (`acme_client.retry_record`, under the issue lock) and read
  before every attempt, so a restarted process, a sibling worker or the supervisor continues
  the backoff instead of contacting the CA at once (certmagic keeps it in memory only: a
  deliberate deviation, to spare the CA's failed-validation limits); success deletes it;
- `on_certificate(name, cert_pem, key_pem)` is called whenever a (new) certificate for a name is
  available, so the engine installs it; `status()` reports issuer, expiry, next renewal and the
  last error per name for `pyproxy certs` and the admin API.

Log lines start with the subject: `example.com: obtaining certificate: <cause>`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from acme_client.certificates import (
    CertificateError,
    LoadedCertificate,
    find_stored_certificate,
    normalize_host,
)
from acme_client.issuer import (
    LE_PRODUCTION_CA,
    LE_STAGING_CA,
    AcmeIssuer,
    IssuedCertificate,
    IssuerConfig,
    IssuerError,
    RenewalInfo,
)
from acme_client.locks import Locker, LockOwner, waiting_message
from acme_client.retry_record import (
    RetryRecord,
    RetryRecordError,
    parse_retry_record,
    record_failure,
    retry_record_json,
)
from acme_client.schedule import (
    DEFAULT_RENEW_INTERVAL_S,
    DEFAULT_RENEWAL_WINDOW_RATIO,
    RETRY_INTERVALS_S,
    next_check_delay_s,
    renewal_time,
)
from acme_client.storage import (
    CertificateResource,
    Storage,
    retry_record_key,
    save_certificate_resource,
)
from acme_client.zerossl_api import ZeroSSLConfig, ZeroSSLIssuer

log = logging.getLogger("acme_client.manager")

# `extra=` mark for a log line that states the node's shared state (a certificate in service
# from storage, a lock held elsewhere): every worker of a node sees the same state, so only the
# first worker says it (proxy.worker.SiblingQuiet). Lines about work this process did itself
# (orders, challenge steps, "obtained", retries) carry no mark and are logged by whoever did it.
NODE_STATE: dict[str, object] = {"node_state": True}

T = TypeVar("T")
CertificateCallback = Callable[[str, bytes, bytes], Awaitable[None] | None]
Clock = Callable[[], datetime]

# How often a waiter re-tries another instance's `issue_cert_<name>` lock.
LOCK_POLL_INTERVAL_S = 1.0
# Worker threads for the `acme` library and storage I/O (shared by all names).
MAX_WORKERS = 4


# An issuer's settings: an ACME CA (`acme`) or ZeroSSL's API (`zerossl`).
IssuerSettings = IssuerConfig | ZeroSSLConfig


class CertificateIssuer(Protocol):
    """What the manager uses of an issuer: AcmeIssuer, or ZeroSSLIssuer (certmagic.Issuer)."""

    @property
    def config(self) -> IssuerSettings: ...
    @property
    def issuer_key(self) -> str: ...
    @property
    def accounts_registered(self) -> int: ...

    async def obtain_async(
        self,
        names: Sequence[str],
        *,
        replaces: bytes | None = None,
        on_step: Callable[[str], None] | None = None,
        on_order: Callable[[], None] | None = None,
    ) -> IssuedCertificate: ...

    async def renewal_info_async(self, cert_pem: bytes) -> RenewalInfo | None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def staging_ca_for(ca_url: str) -> str | None:
    """The CA to test against first after a failure (only for Let's Encrypt production)."""
    return LE_STAGING_CA if ca_url.rstrip("/") == LE_PRODUCTION_CA else None


def lock_name_for(name: str) -> str:
    """certmagic's lock key for obtaining/renewing one certificate."""
    return f"issue_cert_{name}"


@dataclass(slots=True)
class CertStatus:
    """What the operator sees for one managed name (`pyproxy certs`, admin API)."""

    name: str
    issuer: str = ""
    state: str = "pending"  # pending, obtaining, valid, renewing, waiting_retry, failed
    not_after: datetime | None = None
    next_renewal: datetime | None = None
    next_attempt: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    failures: int = 0
    orders: int = 0  # newOrder requests the CAs accepted for this name (staging tests included)

    def to_json(self) -> dict[str, Any]:
        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment is not None else None

        return {
            "name": self.name,
            "issuer": self.issuer,
            "state": self.state,
            "not_after": iso(self.not_after),
            "next_renewal": iso(self.next_renewal),
            "next_attempt": iso(self.next_attempt),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "failures": self.failures,
            "orders": self.orders,
        }


@dataclass(slots=True)
class _Job:
    name: str
    status: CertStatus
    task: asyncio.Task[None] | None = None
    installed_pem: bytes | None = None
    ari: RenewalInfo | None = None
    ari_for_pem: bytes | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # The retry record as last read or written (also the fallback when storage cannot keep it).
    retry: RetryRecord | None = None
    # A record is looked for once even when no attempt is due (see _run).
    retry_record_checked: bool = False
    # A record ignored (unreadable, or made against other issuers) is logged once, not per read.
    ignored_record: bytes | None = None
    # The next attempt last announced as "waiting", so a long wait logs once.
    announced_attempt: datetime | None = None


class _Backoff(Exception):
    """Not now: `record` says when the CA may be contacted again (`ours`: we just failed)."""

    def __init__(self, record: RetryRecord, *, ours: bool) -> None:
        super().__init__(record.last_error)
        self.record = record
        self.ours = ours


class CertificateManager:
    """Obtains and renews certificates for a set of names; see the module docstring."""

    def __init__(
        self,
        storage: Storage,
        issuers: IssuerSettings | Sequence[IssuerSettings],
        *,
        on_certificate: CertificateCallback | None = None,
        locker: Locker | None = None,
        renew_interval_s: float = DEFAULT_RENEW_INTERVAL_S,
        renewal_window_ratio: float = DEFAULT_RENEWAL_WINDOW_RATIO,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        retry_intervals_s: Sequence[float] = RETRY_INTERVALS_S,
        lock_poll_interval_s: float = LOCK_POLL_INTERVAL_S,
        staging_fallback: bool = True,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        self.storage = storage
        self.locker = locker or storage.new_locker()
        self.on_certificate = on_certificate
        self.renew_interval_s = renew_interval_s
        self.renewal_window_ratio = renewal_window_ratio
        self.clock = clock
        self.rng = rng or random.Random()
        self.retry_intervals_s = tuple(retry_intervals_s)
        self.lock_poll_interval_s = lock_poll_interval_s
        self.staging_fallback = staging_fallback
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="cert-manager"
        )
        self._issuer_configs: tuple[IssuerSettings, ...] = ()
        self._issuers: dict[str, CertificateIssuer] = {}
        self._jobs: dict[str, _Job] = {}
        self._stopped = False
        self._set_issuers(issuers)

    # --- public API ---------------------------------------------------------------------------

    @property
    def issuers(self) -> tuple[CertificateIssuer, ...]:
        return tuple(self.issuer_for(c) for c in self._issuer_configs)

    def issuer_for(self, config: IssuerSettings) -> CertificateIssuer:
        """The (cached) issuer for `config`; one account setup per CA + email."""
        key = f"{config.issuer_key}|{config.email if isinstance(config, IssuerConfig) else ''}"
        issuer = self._issuers.get(key)
        if issuer is None or issuer.config != config:
            issuer = issuer_from_settings(
                config, self.storage, executor=self._executor, rng=self.rng, locker=self.locker
            )
            self._issuers[key] = issuer
        return issuer

    async def start(self, names: Iterable[str]) -> None:
        """Manage `names` (returns at once; certificates arrive through `on_certificate`)."""
        await self.reload(names)

    async def reload(
        self,
        names: Iterable[str],
        issuers: IssuerSettings | Sequence[IssuerSettings] | None = None,
    ) -> None:
        """Switch to a new set of names (and issuers); unchanged names keep their jobs."""
        if self._stopped:
            raise RuntimeError("certificate manager is stopped")
        wanted = {normalize_host(n): None for n in names if n.strip()}
        restart_all = False
        if issuers is not None:
            old = self._issuer_configs
            self._set_issuers(issuers)
            restart_all = old != self._issuer_configs
        for name in list(self._jobs):
            if name not in wanted or restart_all:
                await self._cancel(self._jobs.pop(name))
        for name in wanted:
            if name not in self._jobs:
                job = _Job(name=name, status=CertStatus(name=name))
                self._jobs[name] = job
                job.task = asyncio.create_task(self._run(job), name=f"cert:{name}")

    async def stop(self) -> None:
        """Cancel every job, release our locks; in-flight ACME calls end at their deadline."""
        self._stopped = True
        for job in list(self._jobs.values()):
            await self._cancel(job)
        await self._in_thread(self.locker.unlock_all)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def status(self) -> list[CertStatus]:
        return [self._jobs[name].status for name in sorted(self._jobs)]

    def names(self) -> list[str]:
        return sorted(self._jobs)

    async def wait_ready(self, name: str, timeout_s: float) -> bool:
        """Wait until `name` has a certificate in service; False on timeout."""
        job = self._jobs.get(normalize_host(name))
        if job is None:
            raise KeyError(name)
        try:
            await asyncio.wait_for(job.ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def orders_placed(self) -> int:
        return sum(job.status.orders for job in self._jobs.values())

    def accounts_registered(self) -> int:
        return sum(i.accounts_registered for i in self._issuers.values())

    # --- internals ----------------------------------------------------------------------------

    def _set_issuers(self, issuers: IssuerSettings | Sequence[IssuerSettings]) -> None:
        configs = (
            (issuers,) if isinstance(issuers, IssuerConfig | ZeroSSLConfig) else tuple(issuers)
        )
        if not configs:
            raise ValueError("at least one issuer is required")
        self._issuer_configs = configs
        for config in configs:
            self.issuer_for(config)

    def _issuer_list(self) -> list[CertificateIssuer]:
        return [self.issuer_for(c) for c in self._issuer_configs]

    async def _cancel(self, job: _Job) -> None:
        if job.task is None:
            return
        job.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job.task
        job.task = None

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _load_stored(self, name: str) -> LoadedCertificate | None:
        keys = [i.issuer_key for i in self._issuer_list()]
        try:
            return find_stored_certificate(self.storage, name, keys)
        except CertificateError as exc:
            log.error("%s: stored certificate unusable: %s", name, exc)
            return None

    def _issuer_by_key(self, issuer_key: str) -> CertificateIssuer | None:
        for issuer in self._issuer_list():
            if issuer.issuer_key == issuer_key:
                return issuer
        return None

    async def _install(self, job: _Job, cert: LoadedCertificate) -> None:
        if job.installed_pem == cert.certificate_pem:
            return
        job.installed_pem = cert.certificate_pem
        log.info(
            "%s: certificate in service (issuer %s, expires %s)",
            job.name,
            cert.issuer_key,
            cert.not_after.isoformat(),
            extra=NODE_STATE,
        )
        if self.on_certificate is not None:
            try:
                result = self.on_certificate(job.name, cert.certificate_pem, cert.private_key_pem)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: installing certificate failed", job.name)
        job.ready.set()

    async def _renewal_info(self, job: _Job, cert: LoadedCertificate) -> RenewalInfo | None:
        """ARI for the certificate in service, refreshed when the CA's Retry-After has passed."""
        issuer = self._issuer_by_key(cert.issuer_key)
        if issuer is None:
            return None
        now = self.clock()
        if job.ari_for_pem == cert.certificate_pem and (
            job.ari is None or now < job.ari.retry_after
        ):
            return job.ari
        try:
            info = await issuer.renewal_info_async(cert.certificate_pem)
        except IssuerError as exc:
            log.warning("%s: %s", job.name, exc)
            return job.ari if job.ari_for_pem == cert.certificate_pem else None
        job.ari, job.ari_for_pem = info, cert.certificate_pem
        if info is not None and info.selected_time is not None:
            log.info("%s: ARI selected renewal time %s", job.name, info.selected_time.isoformat())
        return info

    def _renew_at(self, cert: LoadedCertificate, ari: RenewalInfo | None) -> datetime:
        return renewal_time(
            cert.not_before,
            cert.not_after,
            ratio=self.renewal_window_ratio,
            renew_interval_s=self.renew_interval_s,
            ari_selected_time=ari.selected_time if ari is not None else None,
        )

    async def _run(self, job: _Job) -> None:
        """The job of one name: install, wait for renewal, obtain/renew, retry on failure."""
        name, status = job.name, job.status
        if name.startswith("*."):
            # HTTP-01 cannot validate wildcards (RFC 8555 section 7.1.3); retrying cannot help.
            status.state = "failed"
            status.last_error = "obtaining certificate: wildcard names need the DNS-01 challenge"
            status.last_error_at = self.clock()
            log.error("%s: %s", name, status.last_error)
            return
        while True:
            cert = await self._in_thread(self._load_stored, name)
            now = self.clock()
            if cert is not None and not cert.expired(now):
                status.issuer, status.not_after = cert.issuer_key, cert.not_after
                known_ari = job.ari if job.ari_for_pem == cert.certificate_pem else None
                status.next_renewal = self._renew_at(cert, known_ari)
                if job.retry is None:
                    status.state = "valid"
                # Install before anything that talks to the CA (or waits for a backoff): a
                # stored certificate serves at once even when the CA is down.
                await self._install(job, cert)
                ari = await self._renewal_info(job, cert)
                renew_at = self._renew_at(cert, ari)
                status.next_renewal = renew_at
                if self.clock() < renew_at:
                    if job.retry is not None or not job.retry_record_checked:
                        # No attempt is due: a record of earlier failures (ours, or of a run that
                        # stopped before its retry) must not age the next renewal's schedule.
                        job.retry_record_checked = True
                        job.retry = None
                        await self._in_thread(self._delete_retry_record, name)
                    status.state = "valid"
                    status.next_attempt = None
                    status.failures = 0
                    # Re-check each interval: another instance may renew it, ARI may change.
                    await asyncio.sleep(
                        next_check_delay_s(renew_at, self.clock(), self.renew_interval_s)
                    )
                    continue
            action = "renewing" if cert is not None else "obtaining"
            try:
                # A stored backoff (this process's, a sibling's or a previous run's) holds
                # before anything is sent to the CA; _obtain_locked asks again under the lock.
                pending = await self._current_retry_record(job)
                if pending is not None and not pending.may_contact_ca(self.clock()):
                    raise _Backoff(pending, ours=False)
                status.state = action
                await self._obtain_locked(job, cert, action)
                job.retry = None
                status.failures = 0
                continue
            except asyncio.CancelledError:
                raise
            except _Backoff as backoff:
                record = backoff.record
                if not backoff.ours:
                    self._announce_wait(job, record)
            except Exception as exc:
                # Failed outside the attempt itself (taking the lock, reading storage).
                record = await self._record_failure(job, action, job.retry, exc)
            job.retry = record
            status.state = "failed" if record.gave_up else "waiting_retry"
            status.failures = record.failures
            status.last_error, status.last_error_at = record.last_error, record.last_error_at
            status.next_attempt = record.next_attempt
            # Wake up at least every check interval: another instance may obtain it meanwhile.
            await asyncio.sleep(min(record.wait_s(self.clock()), self.renew_interval_s))

    def _announce_wait(self, job: _Job, record: RetryRecord) -> None:
        if job.announced_attempt == record.next_attempt:
            return
        job.announced_attempt = record.next_attempt
        log.info(
            "%s: not contacting the CA before %s (%d failed attempts; last: %s)",
            job.name,
            record.next_attempt.isoformat(),
            record.failures,
            record.last_error,
            extra=NODE_STATE,
        )

    # --- the stored retry record (acme_client.retry_record) -----------------------------------

    def _read_retry_record(self, job: _Job) -> RetryRecord | None:
        """The stored record of `job`, or None (absent or unreadable: treated as absent)."""
        key = retry_record_key(job.name)
        try:
            data = self.storage.load(key)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s: reading retry record %s: %s", job.name, key, exc)
            return None
        try:
            record = parse_retry_record(data)
            if normalize_host(record.name) != job.name:
                raise RetryRecordError(f"name: the record is for {record.name!r}")
        except RetryRecordError as exc:
            if job.ignored_record != data:
                job.ignored_record = data
                log.warning("%s: ignoring unreadable retry record %s: %s", job.name, key, exc)
            return None
        if not record.applies_to(self._issuer_urls()):
            if job.ignored_record != data:
                job.ignored_record = data
                log.info(
                    "%s: the issuers changed since the last failure (%s); not waiting for it",
                    job.name,
                    ", ".join(record.issuers),
                )
            return None
        return record

    def _issuer_urls(self) -> list[str]:
        return [issuer.config.ca for issuer in self._issuer_list()]

    async def _current_retry_record(self, job: _Job) -> RetryRecord | None:
        """The stored record; the in-memory one when storage has none it can give."""
        stored = await self._in_thread(self._read_retry_record, job)
        return stored if stored is not None else job.retry

    def _store_retry_record(self, record: RetryRecord) -> None:
        key = retry_record_key(record.name)
        try:
            self.storage.store(key, retry_record_json(record))  # atomic (rename)
        except OSError as exc:
            log.warning("%s: storing retry record %s (kept in memory): %s", record.name, key, exc)

    def _delete_retry_record(self, name: str) -> None:
        key = retry_record_key(name)
        try:
            self.storage.delete(key)
        except OSError as exc:
            log.warning("%s: deleting retry record %s: %s", name, key, exc)

    async def _record_failure(
        self, job: _Job, action: str, previous: RetryRecord | None, exc: Exception
    ) -> RetryRecord:
        """Log a failed attempt and store the record that schedules the next one."""
        name = job.name
        cause = str(exc) or type(exc).__name__
        if not isinstance(exc, IssuerError | OSError):
            log.exception("%s: %s certificate: unexpected error", name, action)
        log.error("%s: %s certificate: %s", name, action, cause)
        now = self.clock()
        record = record_failure(
            previous,
            name,
            now,
            error=f"{action} certificate: {cause}",
            issuers=self._issuer_urls(),
            rng=self.rng,
            retry_after=exc.retry_after if isinstance(exc, IssuerError) else None,
            intervals=self.retry_intervals_s,
            give_up_wait_s=self.renew_interval_s,
        )
        if record.gave_up:
            # certmagic gives up after 30 days; the next maintenance round starts over.
            log.error("%s: giving up after 30 days of failures", name)
        else:
            log.info(
                "%s: will retry in %.0f s (attempt %d)",
                name,
                record.wait_s(now),
                record.failures + 1,
            )
        job.announced_attempt = record.next_attempt
        await self._in_thread(self._store_retry_record, record)
        return record

    async def _take_lock(self, lock: str) -> None:
        # try_lock in a worker thread, waiting on the event loop (cancellable), rather than
        # blocking a worker thread for as long as another instance holds the lock.
        first = True
        while not await self._in_thread(self.locker.try_lock, lock):
            if first:
                # Say who holds it: a sibling worker of this node is not "another instance".
                holder = await self._in_thread(self.locker.holder_of, lock)
                log.info("%s", waiting_message(lock, holder, LockOwner.current()), extra=NODE_STATE)
                first = False
            await asyncio.sleep(self.lock_poll_interval_s)

    async def _obtain_locked(
        self, job: _Job, current: LoadedCertificate | None, action: str
    ) -> None:
        """One attempt under the issue lock; raises _Backoff when it failed or must wait."""
        name = job.name
        lock = lock_name_for(name)
        await self._take_lock(lock)
        try:
            # Another instance may have done the work while we waited (certmagic re-checks too).
            stored = await self._in_thread(self._load_stored, name)
            if stored is not None and not stored.expired(self.clock()):
                newer = current is None or stored.certificate_pem != current.certificate_pem
                if newer and self.clock() < self._renew_at(stored, None):
                    log.info(
                        "%s: certificate already obtained by another instance",
                        name,
                        extra=NODE_STATE,
                    )
                    return
            # Or failed while we waited: its backoff holds for us too. Reading and writing the
            # record under the lock keeps one count per name across instances.
            previous = await self._current_retry_record(job)
            if previous is not None and not previous.may_contact_ca(self.clock()):
                raise _Backoff(previous, ours=False)
            failures = previous.retry_state.failures if previous is not None else 0
            try:
                await self._attempt(job, current, failures)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                record = await self._record_failure(job, action, previous, exc)
                raise _Backoff(record, ours=True) from exc
            # Also removes a record that could not be read.
            await self._in_thread(self._delete_retry_record, name)
        finally:
            try:
                await asyncio.shield(self._in_thread(self.locker.unlock, lock))
            except Exception as exc:
                log.warning("%s: releasing lock: %s", name, exc)

    def _order_counter(self, job: _Job) -> Callable[[], None]:
        """`on_order` for the issuer (called in a worker thread once the CA accepted an order)."""
        loop = asyncio.get_running_loop()

        def count() -> None:
            job.status.orders += 1

        def notify() -> None:
            loop.call_soon_threadsafe(count)

        return notify

    async def _attempt(self, job: _Job, current: LoadedCertificate | None, failures: int) -> None:
        """Every issuer in order until one issues (certmagic's obtainCert); raises on failure."""
        name = job.name
        errors: list[str] = []
        for issuer in self._issuer_list():
            replaces = (
                current.certificate_pem
                if current is not None and current.issuer_key == issuer.issuer_key
                else None
            )
            try:
                await self._staging_test(job, issuer, failures)
                issued = await issuer.obtain_async(
                    [name],
                    replaces=replaces,
                    on_step=lambda s: log.info("%s: %s", name, s),
                    on_order=self._order_counter(job),
                )
            except IssuerError as exc:
                if len(self._issuer_configs) == 1:
                    raise
                # certmagic logs each issuer's failure ("could not get certificate from
                # issuer") before trying the next; without it a fallback success hides why
                # the preferred CA was skipped.
                log.warning(
                    "%s: could not get certificate from %s: %s", name, issuer.config.ca, exc
                )
                errors.append(f"[{issuer.config.ca}] {exc}")
                continue
            resource = CertificateResource(
                sans=list(issued.names),
                certificate_pem=issued.certificate_pem,
                private_key_pem=issued.private_key_pem,
                issuer_key=issued.issuer_key,
                issuer_data=issued.issuer_data,
            )
            await self._in_thread(save_certificate_resource, self.storage, resource)
            log.info("%s: certificate obtained successfully from %s", name, issuer.config.ca)
            return
        raise IssuerError("; ".join(errors))

    async def _staging_test(self, job: _Job, issuer: CertificateIssuer, failures: int) -> None:
        """After a failure against LE production, prove the setup against staging first."""
        if (
            not self.staging_fallback
            or failures == 0
            or not isinstance(issuer.config, IssuerConfig)
        ):
            return
        staging = staging_ca_for(issuer.config.ca)
        if staging is None:
            return
        log.info("%s: trying the staging CA first after a failed attempt", job.name)
        test = self.issuer_for(issuer.config.with_ca(staging))
        try:
            await test.obtain_async([job.name], on_order=self._order_counter(job))
        except IssuerError as exc:
            raise IssuerError(f"(staging test) {exc}", retry_after=exc.retry_after) from exc


def stored_status(
    storage: Storage,
    names: Iterable[str],
    issuers: Sequence[IssuerSettings],
    *,
    renew_interval_s: float = DEFAULT_RENEW_INTERVAL_S,
    renewal_window_ratio: float = DEFAULT_RENEWAL_WINDOW_RATIO,
) -> list[CertStatus]:
    """Status from storage alone (no CA contact), for `pyproxy certs` without a running server.

    Blocking (reads storage). ARI is not consulted, so `next_renewal` is the expiry-based time.
    A stored retry record (made against these issuers) gives the failures, the last error and
    the next attempt; a name with no certificate is then `waiting_retry`, as a running manager
    reports it.
    """
    keys = [c.issuer_key for c in issuers]
    urls = [c.ca for c in issuers]
    out: list[CertStatus] = []
    for name in sorted({normalize_host(n) for n in names}):
        status = CertStatus(name=name, state="missing")
        try:
            cert = find_stored_certificate(storage, name, keys)
        except CertificateError as exc:
            status.state, status.last_error = "unusable", str(exc)
            cert = None
        if cert is not None:
            status.issuer, status.not_after = cert.issuer_key, cert.not_after
            status.state = "expired" if cert.expired(utc_now()) else "valid"
            status.next_renewal = renewal_time(
                cert.not_before,
                cert.not_after,
                ratio=renewal_window_ratio,
                renew_interval_s=renew_interval_s,
            )
        record = _stored_retry_record(storage, name)
        if record is not None and record.applies_to(urls):
            status.failures = record.failures
            status.last_error, status.last_error_at = record.last_error, record.last_error_at
            status.next_attempt = record.next_attempt
            if status.state == "missing":
                status.state = "failed" if record.gave_up else "waiting_retry"
        out.append(status)
    return out


def _stored_retry_record(storage: Storage, name: str) -> RetryRecord | None:
    """`name`'s retry record, None when absent or unreadable (the running manager says why)."""
    try:
        record = parse_retry_record(storage.load(retry_record_key(name)))
    except (OSError, RetryRecordError):
        return None
    return record if normalize_host(record.name) == name else None


def issuer_from_settings(
    config: IssuerSettings,
    storage: Storage,
    *,
    executor: concurrent.futures.ThreadPoolExecutor,
    rng: random.Random,
    locker: Locker,
) -> CertificateIssuer:
    """The issuer that runs `config`: ACME (AcmeIssuer) or ZeroSSL's API (ZeroSSLIssuer)."""
    if isinstance(config, ZeroSSLConfig):
        return ZeroSSLIssuer(config, storage, executor=executor)
    return AcmeIssuer(config, storage, executor=executor, rng=rng, locker=locker)
