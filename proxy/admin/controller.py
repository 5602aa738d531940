"""What the admin API needs from the engine: `AdminController` (and the optional
`CertificateReporter`), and `ReloadError`, the engine's "valid, but could not be put into service".

Typing only: the engine (proxy.supervisor) implements these; nothing here runs a server.
"""

from __future__ import annotations

from typing import Any, Protocol


class ReloadError(Exception):
    """A config that is valid but could not be put into service (a port in use, a failed
    provision). The engine raises it from `AdminController.load`; the old config stays."""


class AdminController(Protocol):
    """What the admin API needs from the engine. All methods run on the admin server's loop."""

    async def load(self, config: dict[str, Any], force: bool) -> None:
        """Validate, provision and switch to `config` (Caddy JSON, possibly with `@id` fields,
        which the engine ignores). Raise `ConfigError` or `ReloadError` and keep the old config on
        failure. An unchanged config without `force` is a no-op (the admin API already skips
        those it sees, but reloads from signals arrive here too)."""
        ...

    async def current_config(self) -> dict[str, Any]:
        """The config in service, as last given to `load` (or read at startup)."""
        ...

    async def stop(self) -> None:
        """Begin a graceful stop of the whole process (called after `/stop` has answered)."""
        ...

    async def upstreams(self) -> list[dict[str, Any]]:
        """`[{"address": "host:port", "num_requests": int, "fails": int}, ...]`."""
        ...

    async def metrics_text(self) -> str:
        """Prometheus text for `/metrics`, summed across workers (see proxy.metrics)."""
        ...


class CertificateReporter(Protocol):
    """Optional part of an AdminController: engines that manage certificates also answer
    `GET /pyproxy/certificates` (controllers without it answer 404 there, as before)."""

    async def certificates(self) -> list[dict[str, Any]]:
        """One entry per managed name: `name`, `issuer`, `state`, `not_after`, `next_renewal`,
        `next_attempt`, `last_error`, `failures` (times as ISO 8601 strings or null)."""
        ...
