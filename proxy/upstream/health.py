"""Health checks for reverse_proxy upstreams (Caddy's ``health_checks`` JSON object).

This module owns:

* **Passive** checks (``health_checks.passive``, typed by the model as
  ``PassiveHealthChecks``): ``PassiveHealth`` applies that policy and is called by the engine
  after every upstream round trip (``record_response``) or failed attempt (``record_error``);
  it remembers failures on the upstream for ``fail_duration``. Whether the failures make the
  upstream unhealthy is decided by ``Upstream.healthy`` (``max_fails``).
* **Active** checks (``health_checks.active``, typed by the model as ``ActiveHealthChecks``):
  ``ActiveHealthChecker`` probes every upstream on a timer with its own minimal HTTP/1.1 client
  (one connection per probe, ``Connection: close``) and flips ``Upstream`` active health after
  ``fails`` consecutive failures / ``passes`` consecutive successes, logging each change on the
  ``pyproxy.health`` logger.

Differences from Caddy, on purpose: pass/fail thresholds count *consecutive* results as Caddy's
documentation says (Caddy's code keeps counting across interleaved results); a status listed
twice in ``unhealthy_status`` (e.g. ``500`` and ``5``) counts one failure, not two; the body read
for ``expect_body`` is capped at ``max_size`` or 1 MiB when unset; redirects (when followed) are
sent to the same upstream address, as Caddy's transport does, so a health check cannot be
steered to another host.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from config.model import (
    DEFAULT_HEALTH_INTERVAL_S,
    DEFAULT_HEALTH_TIMEOUT_S,
    ActiveHealthChecks,
    PassiveHealthChecks,
)
from proxy.http.fields import bodiless_status, status_code_matches
from proxy.upstream.upstream import Upstream

__all__ = [
    "ActiveHealthChecker",
    "CheckResult",
    "PassiveHealth",
    "ProbeError",
    "ProbeResponse",
    "apply_check_result",
    "http_probe",
    "status_matches",
]

logger = logging.getLogger("pyproxy.health")

DEFAULT_INTERVAL_S = DEFAULT_HEALTH_INTERVAL_S
DEFAULT_TIMEOUT_S = DEFAULT_HEALTH_TIMEOUT_S
DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_HEAD_BYTES = 64 * 1024
# Go's http.Client stops after 10 redirects; Caddy's checker uses that client.
MAX_REDIRECTS = 10
USER_AGENT = "pyproxy-health-checker"
TARGET_UPSTREAM_PLACEHOLDER = "http.reverse_proxy.active.target_upstream"


# -- status codes ----------------------------------------------------------------------------


# Caddy's status-class rule (``5`` matches 500-599, ``404`` only 404): one home, proxy.http.fields.
status_matches = status_code_matches


# -- passive ---------------------------------------------------------------------------------


class PassiveHealth:
    """Applies the model's ``health_checks.passive``; counts failures when ``fail_duration_s > 0``.

    The fields read per response are copied out of ``config`` (one attribute lookup each).
    """

    __slots__ = ("config", "fail_duration_s", "unhealthy_latency_s", "unhealthy_status")

    def __init__(self, config: PassiveHealthChecks | None = None) -> None:
        self.config = config if config is not None else PassiveHealthChecks()
        self.fail_duration_s = self.config.fail_duration_s
        self.unhealthy_status = self.config.unhealthy_status
        self.unhealthy_latency_s = self.config.unhealthy_latency_s

    @property
    def enabled(self) -> bool:
        return self.fail_duration_s > 0

    def strikes(self, status: int, latency_s: float) -> int:
        """How many failures a response earns: one for a bad status, one for being slow."""
        count = 0
        if any(status_matches(status, bad) for bad in self.unhealthy_status):
            count += 1
        if self.unhealthy_latency_s > 0 and latency_s >= self.unhealthy_latency_s:
            count += 1
        return count

    def record_response(self, upstream: Upstream, status: int, latency_s: float, now: float) -> int:
        """Call when an upstream's response head arrived; ``latency_s`` = time to the head.

        Returns the number of failures recorded (0 when passive checks are disabled).
        """
        if not self.enabled:
            return 0
        count = self.strikes(status, latency_s)
        for _ in range(count):
            upstream.record_failure(now, self.fail_duration_s)
        return count

    def record_error(self, upstream: Upstream, now: float) -> bool:
        """Call when an attempt failed (dial error, reset, timeout). Not for client aborts,
        nor for responses that only matched ``retry_match`` (the upstream did answer)."""
        if not self.enabled:
            return False
        upstream.record_failure(now, self.fail_duration_s)
        return True


# -- active: threshold logic (pure) ----------------------------------------------------------


def apply_check_result(upstream: Upstream, passed: bool, *, passes: int, fails: int) -> bool | None:
    """Count one probe result; return the new health when it flipped, else ``None``.

    Counters hold *consecutive* results in the direction opposite to the current state, and
    reset when the state flips, so ``fails=3`` means three failures in a row.
    """
    if passed:
        upstream.active_fails = 0
        if upstream.active_healthy:
            upstream.active_passes = 0
            return None
        upstream.active_passes += 1
        if upstream.active_passes < passes:
            return None
    else:
        upstream.active_passes = 0
        if not upstream.active_healthy:
            upstream.active_fails = 0
            return None
        upstream.active_fails += 1
        if upstream.active_fails < fails:
            return None
    upstream.set_active_healthy(passed)
    upstream.active_passes = upstream.active_fails = 0
    return passed


# -- active: minimal HTTP/1.1 client ---------------------------------------------------------


class ProbeError(Exception):
    """The health endpoint answered something that is not a usable HTTP/1.x response."""


@dataclass(frozen=True, slots=True)
class ProbeResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


def _no_body(method: str, status: int) -> bool:
    # RFC 9112 §6.3: HEAD responses and 1xx/204/304 never carry a body.
    return method == "HEAD" or bodiless_status(status)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    total = 0
    status_line = await reader.readuntil(b"\n")
    total += len(status_line)
    parts = status_line.decode("latin-1").strip().split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProbeError(f"malformed status line {status_line[:80]!r}")
    status = int(parts[1])
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readuntil(b"\n")
        total += len(line)
        if total > MAX_HEAD_BYTES:
            raise ProbeError("response head too large")
        if line in (b"\r\n", b"\n"):
            return status, headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProbeError(f"malformed header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))


async def _read_chunked(reader: asyncio.StreamReader, cap: int) -> bytes:
    body = bytearray()
    while len(body) < cap:
        size_line = await reader.readuntil(b"\n")
        size_text = size_line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProbeError(f"malformed chunk size {size_text[:20]!r}")
        if size == 0:
            break
        body += await reader.readexactly(min(size, cap - len(body) + 1))
        if len(body) > cap:
            break
        await reader.readexactly(2)  # CRLF after the chunk data
    return bytes(body[:cap])


async def _read_body(
    reader: asyncio.StreamReader, headers: list[tuple[str, str]], cap: int
) -> bytes:
    lowered = {k.lower(): v for k, v in headers}
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, cap)
    length_text = lowered.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise ProbeError(f"invalid Content-Length {length_text!r}")
        return await reader.readexactly(min(int(length_text), cap))
    # No framing: the body runs to connection close (we sent Connection: close).
    body = bytearray()
    while len(body) < cap:
        chunk = await reader.read(min(65536, cap - len(body)))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def http_probe(
    *,
    host: str,
    port: int,
    method: str = "GET",
    target: str = "/",
    host_header: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    read_body: bool = False,
    max_body: int = DEFAULT_MAX_BODY_BYTES,
    ssl_context: ssl.SSLContext | None = None,
    server_name: str | None = None,
    unix_path: str | None = None,
) -> ProbeResponse:
    """Send one HTTP/1.1 request on a fresh connection and read the response.

    No timeout of its own: the caller wraps it (the checker bounds the whole exchange, redirects
    included, like Go's ``http.Client.Timeout``). The body is read only when ``read_body``.
    """
    if unix_path is not None:
        reader, writer = await asyncio.open_unix_connection(
            unix_path, ssl=ssl_context, server_hostname=server_name if ssl_context else None
        )
    else:
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=ssl_context,
            server_hostname=(server_name or host) if ssl_context else None,
            limit=MAX_HEAD_BYTES,
        )
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
        sent = {"host"}
        for name, value in headers:
            lines.append(f"{name}: {value}")
            sent.add(name.lower())
        if "user-agent" not in sent:
            lines.append(f"User-Agent: {USER_AGENT}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        while True:
            status, resp_headers = await _read_head(reader)
            # Interim responses (100 Continue, 103 Early Hints) precede the real one.
            if 100 <= status < 200 and status != 101:
                continue
            break
        data = b""
        if read_body and not _no_body(method, status):
            data = await _read_body(reader, resp_headers, max_body)
        return ProbeResponse(status, resp_headers, data)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


# -- active: checker -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of one probe: ``passed``, a short ``reason`` when not, and whether it flipped."""

    upstream: Upstream
    passed: bool
    reason: str = ""
    changed_to: bool | None = None


_PLACEHOLDER = re.compile(r"\{([^{}\s]+)\}")


def _replace(text: str, known: Mapping[str, str], *, unknown_empty: bool) -> str:
    """Replace the global placeholders a health check may use (env and target upstream)."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in known:
            return known[key]
        if key.startswith("env."):
            return os.environ.get(key[4:], "")
        return "" if unknown_empty else match.group(0)

    return _PLACEHOLDER.sub(sub, text)


class ActiveHealthChecker:
    """Probes every upstream of one handler every ``interval`` and flips their active health.

    ``ssl_context`` is the handler transport's client TLS context (``None`` for plain HTTP);
    ports in ``tls_except_ports`` are probed without TLS, as Caddy's ``except_ports``.
    ``server_name`` overrides SNI (the transport's ``tls.server_name``).
    """

    def __init__(
        self,
        config: ActiveHealthChecks,
        upstreams: Sequence[Upstream],
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        tls_except_ports: Iterable[int] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.upstreams = list(upstreams)
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.tls_except_ports = frozenset(int(p) for p in tls_except_ports)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start probing (first round immediately, like Caddy). Needs a running loop."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="pyproxy-active-health"
        )

    async def stop(self) -> None:
        """Cancel the probe loop and wait until it and its in-flight probes have ended."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            # Re-raise only if *we* are being cancelled, not because the task we cancelled ended.
            if current is not None and current.cancelling():
                raise

    async def _run(self) -> None:
        interval = self.config.interval_s
        next_round = self._clock()
        while True:
            try:
                await self.check_all()
            except Exception:
                # Keep checking: a bug in one round must not leave upstreams frozen in one state.
                logger.exception("active health checker failed")
            # Fixed-rate ticks like Caddy's ticker; a slow round skips missed ticks.
            next_round += interval
            now = self._clock()
            if next_round <= now:
                next_round = now + interval
            await asyncio.sleep(next_round - now)

    # -- probing -----------------------------------------------------------------------------

    async def check_all(self) -> list[CheckResult]:
        """Probe every upstream concurrently once and apply the results."""
        return list(await asyncio.gather(*(self.check(u) for u in self.upstreams)))

    async def check(self, upstream: Upstream) -> CheckResult:
        """Probe one upstream, apply the result to it, log a state change."""
        outcome = await self._probe(upstream)
        if outcome is None:
            # Not the upstream's fault (unusable probe address): leave its health alone and
            # say why, as Caddy does for bad addresses.
            logger.error("%s: cannot run active health check: bad probe address", upstream.dial)
            return CheckResult(upstream, False, "bad probe address")
        passed, reason = outcome
        cfg = self.config
        changed = apply_check_result(upstream, passed, passes=cfg.passes, fails=cfg.fails)
        if changed is False:
            logger.warning("%s: upstream is unhealthy: %s", upstream.dial, reason)
        elif changed is True:
            logger.info("%s: upstream is healthy", upstream.dial)
        elif not passed:
            logger.debug("%s: active health check failed: %s", upstream.dial, reason)
        return CheckResult(upstream, passed, reason, changed)

    def _probe_address(self, upstream: Upstream) -> tuple[str, str, int, str]:
        """(network, host, port, Host header) to probe for ``upstream``."""
        cfg = self.config
        if cfg.upstream:
            # An alternative health endpoint replaces the address; its port wins over `port`.
            # The model parsed it; one with placeholders has no fixed address (host "").
            addr = cfg.upstream_address
            if addr is None:
                return "tcp", "", 0, cfg.upstream
            return addr.network, addr.host, addr.port, cfg.upstream
        network, host, port = upstream.network, upstream.host, upstream.port
        if cfg.port:
            network, port = "tcp", cfg.port
        if network.startswith("unix"):
            return network, host, port, "localhost"
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return network, host, port, hostport

    async def _probe(self, upstream: Upstream) -> tuple[bool, str] | None:
        """``(passed, reason)``, or ``None`` when there is no usable address to probe."""
        cfg = self.config
        try:
            network, host, port, host_header = self._probe_address(upstream)
        except ValueError:
            return None
        if not host:
            return None  # dynamic dial address (placeholders): nothing fixed to probe
        known = {TARGET_UPSTREAM_PLACEHOLDER: upstream.dial}
        headers: list[tuple[str, str]] = []
        for raw_name, values in cfg.headers:
            name = _replace(raw_name, known, unknown_empty=True)
            if name.lower() == "host":
                host_header = _replace(values[0] if values else "", known, unknown_empty=True)
                continue
            headers.extend((name, _replace(v, known, unknown_empty=False)) for v in values)
        body = _replace(cfg.body, known, unknown_empty=True).encode() if cfg.body else b""
        use_tls = self.ssl_context is not None and port not in self.tls_except_ports
        method, target = cfg.method, cfg.target
        try:
            async with asyncio.timeout(cfg.timeout_s):
                for _ in range(MAX_REDIRECTS + 1):
                    resp = await http_probe(
                        host=host,
                        port=port,
                        method=method,
                        target=target,
                        host_header=host_header,
                        headers=headers,
                        body=body,
                        read_body=cfg.expect_body is not None,
                        max_body=cfg.max_size or DEFAULT_MAX_BODY_BYTES,
                        ssl_context=self.ssl_context if use_tls else None,
                        server_name=self.server_name,
                        unix_path=host if network.startswith("unix") else None,
                    )
                    location = resp.header("location")
                    if not (cfg.follow_redirects and resp.status in _REDIRECTS and location):
                        break
                    scheme = "https" if use_tls else "http"
                    url = urlsplit(urljoin(f"{scheme}://{host_header}{target}", location))
                    host_header = url.netloc or host_header
                    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
                    # Go's client turns 301/302/303 into a body-less GET; 307/308 replay as is.
                    if resp.status in (301, 302, 303) and method != "HEAD":
                        method, body = "GET", b""
                else:
                    return False, f"stopped after {MAX_REDIRECTS} redirects"
        except TimeoutError:
            return False, f"timeout after {cfg.timeout_s:g}s"
        except (OSError, EOFError, asyncio.LimitOverrunError, ProbeError, ValueError) as exc:
            return False, str(exc) or type(exc).__name__
        if cfg.expect_status:
            if not status_matches(resp.status, cfg.expect_status):
                return False, f"status {resp.status}"
        elif not 200 <= resp.status < 300:
            return False, f"status {resp.status}"
        if cfg.expect_body is not None and not cfg.expect_body.search(resp.body):
            return False, "response body failed expectations"
        return True, ""


_REDIRECTS = frozenset((301, 302, 303, 307, 308))
