"""The node's ACME certificate management, run by the supervisor: one manager per node.

Caddy is one process: certmagic places one order per name and retries on one schedule. pyproxy
serves from several worker processes, and when each of them ran its own managers a name whose
validation failed got one order and one failed validation per worker per retry cycle (Let's
Encrypt allows 5 failed validations per account, name and hour: a 5-core host locked a name out
with one bad deploy). So the supervisor alone talks to the CA (pyproxy issue #12):

- it runs one `acme_client.manager.CertificateManager` per issuer list (`proxy.certs.acme_plan`),
  obtains, renews and retries, and logs each step once;
- it starts only after the workers bound their listeners and the admin endpoint is up, so a
  start that fails (a port or the admin address taken) never contacted a CA (Caddy provisions
  the TLS app's automation after the servers started);
- a certificate it stores is announced to the workers (`on_stored`; the supervisor sends each
  serving worker `certificates_changed`), which load it from storage — they also poll storage, so
  a worker that misses the message (being replaced) still picks it up;
- challenges are published in storage before the CA is told to validate, so whichever worker
  the CA's request reaches answers it (certmagic's distributed solving);
- a reload keeps the managers whose issuer list is unchanged (their names are switched, jobs of
  unchanged names go on: a retry wait is not reset by a reload) and stops the others.

`status()` is the operator's view of the ACME names (`pyproxy certs`, the admin API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from acme_client.manager import CertificateManager, CertStatus
from acme_client.redis_storage import close_storage
from proxy.certs import AcmeGroup, CertSetup, acme_plan

log = logging.getLogger("pyproxy.certs")


class NodeCertificates:
    """The ACME managers of this node; see the module docstring. Used in one event loop.

    `on_stored()` is called (in the loop) after a manager put a new certificate in service.
    `manager_options` go to every CertificateManager (tests shorten its intervals).
    """

    def __init__(
        self,
        on_stored: Callable[[], None] | None = None,
        *,
        manager_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.on_stored = on_stored
        self.manager_options = dict(manager_options or {})
        self._managers: dict[str, tuple[AcmeGroup, CertificateManager]] = {}
        self._storage_root: str | None = None
        self._unsupported: dict[str, str] = {}

    async def apply(self, setup: CertSetup) -> None:
        """Manage the ACME names of `setup` (a new config in service); returns at once."""
        plan = acme_plan(setup)
        root = setup.storage_identity()
        if root != self._storage_root:
            # Another storage is another world (accounts, locks, certificates): start over.
            await self._stop_managers(list(self._managers))
            self._storage_root = root
        for name, why in plan.unsupported.items():
            if name not in self._unsupported:
                log.error("%s: obtaining certificate: %s", name, why)
        self._unsupported = dict(plan.unsupported)
        wanted = {group.key: group for group in plan.groups}
        await self._stop_managers([key for key in self._managers if key not in wanted])
        for key, group in wanted.items():
            current = self._managers.get(key)
            if current is not None:
                manager = current[1]
                manager.renewal_window_ratio = group.renewal_ratio
                manager.renew_interval_s = plan.renew_interval_s
                self._managers[key] = (group, manager)
                await manager.reload(group.names)
                continue
            manager = CertificateManager(
                setup.open_storage(),
                group.issuers,
                on_certificate=self._stored,
                renewal_window_ratio=group.renewal_ratio,
                renew_interval_s=plan.renew_interval_s,
                **self.manager_options,
            )
            self._managers[key] = (group, manager)
            await manager.start(group.names)

    def _stored(self, _name: str, _cert_pem: bytes, _key_pem: bytes) -> None:
        if self.on_stored is not None:
            self.on_stored()

    async def _stop_managers(self, keys: list[str]) -> None:
        for key in keys:
            _group, manager = self._managers.pop(key)
            with contextlib.suppress(Exception):
                await manager.stop()
            # The manager's storage was opened for it here (`setup.open_storage()`): close its
            # Redis connections too, or every reload that replaces a manager leaves some open.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(close_storage, manager.storage)

    async def stop(self) -> None:
        """Stop every manager (cancels their jobs, releases their storage locks, closes their
        storage's connections)."""
        await self._stop_managers(list(self._managers))

    def status(self) -> list[dict[str, Any]]:
        """One entry per ACME name: issuer, state, expiry, next renewal or attempt, last error."""
        out: list[dict[str, Any]] = []
        for group, manager in self._managers.values():
            for st in manager.status():
                entry = st.to_json()
                # The manager learns the issuer when a certificate is stored; before that (or
                # while every order fails) the operator still wants to see which CA is being
                # tried: the first in the list, as the storage-only view shows.
                if not entry["issuer"] and group.issuers:
                    entry["issuer"] = group.issuers[0].issuer_key
                out.append(entry)
        for name, error in sorted(self._unsupported.items()):
            out.append(CertStatus(name=name, state="failed", last_error=error).to_json())
        return sorted(out, key=lambda e: str(e["name"]))

    def orders_placed(self) -> int:
        return sum(manager.orders_placed() for _group, manager in self._managers.values())


async def announce(workers: list[Any], timeout_s: float) -> None:
    """Tell each of `workers` (proxy.supervisor.WorkerHandle) that storage holds a new
    certificate; one that does not answer (exiting, being replaced) polls storage anyway."""
    await asyncio.gather(
        *(w.request("certificates_changed", timeout_s) for w in workers), return_exceptions=True
    )
