"""The admin API: Caddy's management endpoint (default `localhost:2019`), built on aiohttp.

This module owns
- `AdminController`, the interface the engine implements (load a config, report the current
  one, stop, list upstreams, render metrics),
- the HTTP surface: `POST /load` (JSON, or a Caddyfile with `Content-Type: text/caddyfile`),
  `POST /adapt`, `GET|POST|PUT|PATCH|DELETE /config/<path>`, `/id/<id>/<path>`, `POST /stop`,
  `GET /metrics`, `GET /reverse_proxy/upstreams`, and pyproxy's own `GET /pyproxy/certificates`
  (managed certificates, when the controller implements `CertificateReporter`), with Caddy's
  error shape (`{"error": "…"}`)
  and Caddy's Host/Origin protections,
- the admin listener's lifecycle from the config's `admin` object (`disabled`, `listen`,
  `enforce_origin`, `origins`, `config.persist`): `start_admin_server` and
  `AdminServer.update/close`, plus the autosave of pushed configs (`autosave.json`).

Behaviour follows Caddy's admin.go, caddyconfig/load.go and reverseproxy/admin.go; status codes
and messages are Caddy's unless a comment says otherwise. Config traversal and mutation work on a
copy of the current config, and the result is handed to `AdminController.load` whole, so the
engine has one way in for every config change.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import ipaddress
import json
import logging
import os
import posixpath
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from config.errors import ConfigError
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.metrics import ProxyMetrics

log = logging.getLogger("pyproxy.admin")

DEFAULT_ADMIN_LISTEN = "localhost:2019"
# Caddy reads at most 100 MB of config from a request body.
MAX_CONFIG_BYTES = 100 * 1024 * 1024
# Caddy gives an old admin server 10 s to finish its requests when it is replaced or stopped.
ADMIN_SHUTDOWN_TIMEOUT_S = 10.0
# How long a replaced admin listener keeps running so the response to the request that replaced
# it (a /load) is written before the socket closes.
REPLACE_DELAY_S = 0.1

CONFIG_KEY = "config"
ID_KEY = "@id"


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


class APIError(Exception):
    """An error answered as `{"error": message}` with `status` (Caddy's caddy.APIError)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- JSON like Go's encoding/json ------------------------------------------------------------


def go_json(value: Any) -> bytes:
    """Encode like Go's json.Encoder on decoded JSON: map keys sorted, compact, HTML-sensitive
    characters escaped, trailing newline. Keeps `/config/` output and ETags stable."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return text.encode("utf-8") + b"\n"


_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def decode_json_body(body: bytes) -> Any:
    """Decode a request body as Go would (NaN/Infinity are not JSON); APIError-free, raises
    ValueError with a Caddy-like message."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"decoding request body: invalid UTF-8 at offset {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"decoding request body: {exc.msg}, at offset {exc.pos}") from exc


# --- config traversal (Caddy's unsyncedConfigAccess semantics) ------------------------------


class TraversalError(Exception):
    """A path or value problem in a /config/ request; `status` None means "plain error" (Caddy
    answers those with 400 on GET and 500 on changes)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _array_index(text: str) -> int:
    # Canonical decimal only: "01" or "+1" would name the same element two ways.
    if text == "":
        raise ValueError("empty index")
    try:
        idx = int(text, 10)
    except ValueError:
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax') from None
    if str(idx) != text:
        raise ValueError("non-canonical array index")
    return idx


def config_access(root: dict[str, Any], method: str, path: str, value: Any = None) -> Any:
    """Read or change `root` ({"config": <config>}) at `path` ("/config/apps/http/...").

    GET returns the value found (None for a missing key, as Caddy answers `null`). POST sets a
    key or appends to an array (`.../...` appends the elements of an array value), PUT creates
    a key (409 when it exists) or inserts into an array, PATCH replaces (404 when missing),
    DELETE removes. Changes are made in place.
    """
    clean = path.strip("/")
    if not clean:
        raise TraversalError("no traversable path")
    parts = clean.split("/")
    ellipses = parts[-1] == "..."
    if ellipses:
        parts = parts[:-1]
    ptr: Any = root
    for i, part in enumerate(parts):
        if isinstance(ptr, dict):
            arr = ptr.get(part)
            if isinstance(arr, list) and i == len(parts) - 2:
                return _array_access(ptr, part, arr, method, path, parts[-1], value, ellipses)
            if i == len(parts) - 1:
                return _key_access(ptr, part, method, path, value, ellipses)
            if ptr.get(part) is None and method == "PUT":
                ptr[part] = {}
            ptr = ptr.get(part)
        elif isinstance(ptr, list):
            where = "/".join(parts[: i + 1])
            try:
                idx = _array_index(part)
            except ValueError as exc:
                raise TraversalError(f"[/{where}] invalid array index '{part}': {exc}") from None
            if idx < 0 or idx >= len(ptr):
                raise TraversalError(f"[/{where}] array index out of bounds: {part}")
            ptr = ptr[idx]
        else:
            raise TraversalError(f"invalid traversal path at: {'/'.join(parts[: i + 1])}")
    return None


def _array_access(
    parent: dict[str, Any],
    key: str,
    arr: list[Any],
    method: str,
    path: str,
    idx_text: str,
    value: Any,
    ellipses: bool,
) -> Any:
    idx = 0
    if method != "POST":
        try:
            idx = _array_index(idx_text)
        except ValueError as exc:
            raise TraversalError(f"[{path}] invalid array index '{idx_text}': {exc}") from None
        if idx < 0 or (method != "PUT" and idx >= len(arr)) or idx > len(arr):
            raise TraversalError(f"[{path}] array index out of bounds: {idx_text}")
    if method == "GET":
        return arr[idx]
    if method == "POST":
        # Like Caddy, POST to `.../array/N` appends; the index is not used.
        _append(parent, key, arr, value, ellipses)
    elif method == "PUT":
        arr.insert(idx, value)
    elif method == "PATCH":
        arr[idx] = value
    elif method == "DELETE":
        del arr[idx]
    else:
        raise TraversalError(f"unrecognized method {method}")
    return None


def _key_access(
    obj: dict[str, Any], key: str, method: str, path: str, value: Any, ellipses: bool
) -> Any:
    if method == "GET":
        return obj.get(key)
    if method == "POST":
        current = obj.get(key)
        if isinstance(current, list):
            _append(obj, key, current, value, ellipses)
        else:
            obj[key] = value
    elif method == "PUT":
        if key in obj:
            raise TraversalError(f"[{path}] key already exists: {key}", 409)
        obj[key] = value
    elif method == "PATCH":
        if key not in obj:
            raise TraversalError(f"[{path}] key does not exist: {key}", 404)
        obj[key] = value
    elif method == "DELETE":
        if key not in obj:
            raise TraversalError(f"[{path}] key does not exist: {key}", 404)
        del obj[key]
    else:
        raise TraversalError(f"unrecognized method {method}")
    return None


def _append(obj: dict[str, Any], key: str, arr: list[Any], value: Any, ellipses: bool) -> None:
    if ellipses:
        if not isinstance(value, list):
            raise TraversalError("final element is not an array")
        obj[key] = arr + value
    else:
        obj[key] = [*arr, value]


def index_ids(config: Any, base: str = "/" + CONFIG_KEY) -> dict[str, str]:
    """Map every `@id` in `config` to its path (Caddy's indexConfigObjects); duplicate IDs and
    IDs that are neither strings nor numbers are errors, as in Caddy."""
    index: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == ID_KEY:
                    if isinstance(v, bool) or not isinstance(v, str | int | float):
                        raise ValueError(f"{where}: {ID_KEY} field must be a string or number")
                    ident = v if isinstance(v, str) else _go_number(v)
                    if ident in index:
                        raise ValueError(
                            f"duplicate ID '{ident}' found at {index[ident]} and {where}"
                        )
                    index[ident] = where
                    continue
                walk(v, posixpath.join(where, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, posixpath.join(where, str(i)))

    walk(config, base)
    return index


def _go_number(v: int | float) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def strip_meta_fields(config: Any) -> Any:
    """A copy of `config` without `@id` keys (what Caddy decodes the config from)."""
    if isinstance(config, dict):
        return {k: strip_meta_fields(v) for k, v in config.items() if k != ID_KEY}
    if isinstance(config, list):
        return [strip_meta_fields(v) for v in config]
    return config


# --- listen addresses, allowed hosts and origins --------------------------------------------


@dataclass(frozen=True, slots=True)
class AdminAddress:
    """A parsed admin `listen` value: `[network/]host:port` or `unix//path`."""

    network: str  # tcp, tcp4, tcp6 or unix
    host: str  # the socket path for unix
    port: int

    @property
    def is_unix(self) -> bool:
        return self.network == "unix"

    def is_wildcard(self) -> bool:
        if self.is_unix:
            return False
        if self.host == "":
            return True
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    def is_loopback(self) -> bool:
        if self.is_unix or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def join_host_port(self) -> str:
        """Go's net.JoinHostPort: brackets around IPv6 literals."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix/{self.host}"
        prefix = "" if self.network == "tcp" else f"{self.network}/"
        return prefix + self.join_host_port()


def default_admin_listen() -> str:
    """Like Caddy, the CADDY_ADMIN environment variable replaces the built-in default."""
    return os.environ.get("CADDY_ADMIN", DEFAULT_ADMIN_LISTEN)


def parse_admin_listen(listen: str | None) -> AdminAddress:
    text = (listen or "").strip() or default_admin_listen()
    network = "tcp"
    head, sep, rest = text.partition("/")
    if sep and head.lower() in ("tcp", "tcp4", "tcp6", "unix"):
        network, text = head.lower(), rest
    if network == "unix":
        if not text:
            raise ConfigError(f"admin: parsing listener address: missing socket path: {listen}")
        return AdminAddress("unix", text, 0)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(f"admin: parsing listener address: missing port in address {text}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "-" in port_text:
        raise ConfigError(
            f"admin: must be exactly one listener address; cannot listen on: {listen}"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"admin: parsing listener address: invalid port: {port_text}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"admin: parsing listener address: port out of range: {port}")
    return AdminAddress(network, host, port)


@dataclass(frozen=True, slots=True)
class AllowedOrigin:
    scheme: str  # "" matches any scheme
    host: str  # host[:port], compared exactly


def allowed_origins(addr: AdminAddress, origins: list[str] | None) -> list[AllowedOrigin]:
    """Caddy's allowedOrigins: the configured `origins`, plus — when `origins` is not set — the
    listen address (for loopback: localhost, ::1 and 127.0.0.1 at the listen port). An empty
    `origins` list allows nothing, on purpose."""
    wanted: list[str] = list(dict.fromkeys(origins or []))
    if origins is None and not addr.is_unix:
        if addr.is_loopback():
            port = addr.port
            wanted += [f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"]
        else:
            wanted.append(addr.join_host_port())
    out: list[AllowedOrigin] = []
    for text in dict.fromkeys(wanted):
        if "://" in text:
            try:
                parts = urlsplit(text)
            except ValueError:
                continue
            out.append(AllowedOrigin(parts.scheme, parts.netloc.rpartition("@")[2]))
        else:
            out.append(AllowedOrigin("", text))
    return out


@dataclass(slots=True)
class AccessPolicy:
    """The request checks of one admin listener (mutable so a reload can swap them in place)."""

    enforce_host: bool
    enforce_origin: bool
    allowed: list[AllowedOrigin]

    @classmethod
    def for_listener(
        cls, addr: AdminAddress, enforce_origin: bool, origins: list[str] | None
    ) -> AccessPolicy:
        # Caddy skips the Host check on wildcard interfaces (any name may reach them) and on
        # unix sockets (browsers cannot reach those; file permissions guard them).
        return cls(
            enforce_host=not addr.is_wildcard() and not addr.is_unix,
            enforce_origin=enforce_origin,
            allowed=allowed_origins(addr, origins),
        )

    def check(self, request: web.Request) -> str | None:
        """Raise APIError when the request must be refused; return the origin to echo in
        Access-Control-Allow-Origin, or None when no origin check applied."""
        headers = request.headers
        if "websocket" in headers.get("Upgrade", ""):
            raise APIError(400, "WebSocket connections aren't allowed.")
        if "no-cors" in headers.get("Sec-Fetch-Mode", ""):
            raise APIError(400, "Disabling same-origin restrictions is not allowed.")
        if headers.get("Origin") == "null":
            raise APIError(400, "Buggy browser is sending null Origin header.")
        if self.enforce_host:
            host = headers.get("Host", "")
            if not any(host == a.host for a in self.allowed):
                raise APIError(403, f"host not allowed: {host}")
        if self.enforce_origin or "Origin" in headers or "Sec-Fetch-Mode" in headers:
            raw = headers.get("Origin") or headers.get("Referer") or ""
            try:
                parts = urlsplit(raw)
            except ValueError:
                raise APIError(403, "required Origin header is missing or invalid") from None
            host = parts.netloc.rpartition("@")[2]
            allowed = any(
                (not a.scheme or a.scheme == parts.scheme) and a.host == host for a in self.allowed
            )
            if not allowed:
                raise APIError(403, f"client is not allowed to access from origin '{raw}'")
            return urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return None


# --- autosave ---------------------------------------------------------------------------------


def app_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Caddy's AppConfigDir: `$XDG_CONFIG_HOME/caddy` (`/config/caddy` in the Docker image),
    else `~/.config/caddy`, else `./caddy`."""
    env = os.environ if environ is None else environ
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / "caddy"
    if env.get("HOME"):
        return Path(env["HOME"]) / ".config" / "caddy"
    return Path("./caddy")


def autosave_path(environ: Mapping[str, str] | None = None) -> Path:
    return app_config_dir(environ) / "autosave.json"


def persist_enabled(config: Mapping[str, Any]) -> bool:
    """`admin.config.persist` defaults to true."""
    admin = config.get("admin")
    if not isinstance(admin, Mapping):
        return True
    settings = admin.get("config")
    if not isinstance(settings, Mapping):
        return True
    return settings.get("persist") is not False


def persist_config(config: Mapping[str, Any], path: Path | None = None) -> Path | None:
    """Write `config` to the autosave file (atomically, mode 0600) unless the config turns
    persistence off. Failures are logged, not raised: like Caddy, a config in service stays
    in service when the autosave cannot be written. Returns the path written."""
    if not persist_enabled(config):
        return None
    target = path or autosave_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".autosave-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(go_json(config).rstrip(b"\n"))
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.error("unable to autosave config to %s: %s", target, exc)
        return None
    log.info("autosaved config to %s", target)
    return target


# --- the HTTP application ---------------------------------------------------------------------


def _error_response(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=go_json({"error": message}),
        content_type="application/json",
    )


def _config_error_text(exc: BaseException) -> str:
    if isinstance(exc, ConfigError) and exc.location and exc.location not in str(exc):
        return f"{exc.location}: {exc}"
    return str(exc) or type(exc).__name__


@dataclass(slots=True)
class AdminState:
    """What the handlers share: the engine, the request policy and reload bookkeeping."""

    controller: AdminController
    policy: AccessPolicy
    metrics: ProxyMetrics | None = None
    persist_path: Path | None = None  # None: no autosave (build_admin_app without a server)
    # Called with the new config's `admin` object after a successful load, so the listener can
    # follow it (set by AdminServer).
    on_admin_change: Callable[[Any], Awaitable[None]] | None = None
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` after the current answer, keeping a reference and logging failures."""

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("admin background task failed")

        task = asyncio.ensure_future(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)


_STATE_KEY: web.AppKey[AdminState] = web.AppKey("pyproxy_admin_state", AdminState)

# Route patterns, as Caddy registers them on its mux; also the `path` label of admin metrics.
_EXACT_ROUTES = (
    "/load",
    "/adapt",
    "/stop",
    "/metrics",
    "/reverse_proxy/upstreams",
    "/pyproxy/certificates",
)


def build_admin_app(
    controller: AdminController,
    *,
    listen: str,
    enforce_origin: bool = False,
    origins: list[str] | None = None,
    metrics: ProxyMetrics | None = None,
    persist_path: Path | None = None,
) -> web.Application:
    """The admin API as an aiohttp application for a listener at `listen`.

    `origins` None means "derive from the listen address" (Caddy's default); an empty list
    allows no origin. `persist_path` enables the autosave of configs pushed through the API.
    """
    addr = parse_admin_listen(listen)
    state = AdminState(
        controller=controller,
        policy=AccessPolicy.for_listener(addr, enforce_origin, origins),
        metrics=metrics,
        persist_path=persist_path,
    )
    app = web.Application(client_max_size=MAX_CONFIG_BYTES)
    app[_STATE_KEY] = state
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


def admin_state(app: web.Application) -> AdminState:
    return app[_STATE_KEY]


async def _dispatch(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE_KEY]
    path = request.path
    pattern = _route_pattern(path)
    error = False
    try:
        origin = state.policy.check(request)
        cors = _cors_headers(request.method, origin) if origin is not None else {}
        response = await _route(state, request, path, cors)
        if not response.prepared:
            response.headers.update(cors)
    except APIError as exc:
        error = True
        log.error("admin request error: %s %s: %s (%d)", request.method, path, exc, exc.status)
        response = _error_response(exc.status, exc.message)
    except web.HTTPException:
        raise
    except Exception as exc:
        # A failure in the engine while answering (Caddy: any non-API error is a 500 with the
        # same JSON shape); the traceback goes to the log, not to the client.
        error = True
        log.exception("admin request error: %s %s", request.method, path)
        response = _error_response(500, str(exc) or type(exc).__name__)
    if state.metrics is not None and pattern is not None:
        state.metrics.record_admin_request(pattern, request.method, response.status, error)
    return response


def _cors_headers(method: str, origin: str) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin}
    if method == "OPTIONS":
        headers["Access-Control-Allow-Methods"] = "OPTIONS, GET, POST, PUT, PATCH, DELETE"
        headers["Access-Control-Allow-Headers"] = "Content-Type, Content-Length, Cache-Control"
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def _route_pattern(path: str) -> str | None:
    if path in _EXACT_ROUTES:
        return path
    for prefix in ("/config/", "/id/"):
        if path.startswith(prefix):
            return prefix
    return None


async def _route(
    state: AdminState, request: web.Request, path: str, cors: dict[str, str]
) -> web.StreamResponse:
    if path == "/" + CONFIG_KEY:
        # Go's ServeMux redirects a subtree root without its slash.
        raise web.HTTPMovedPermanently(location="/config/")
    if path.startswith("/config/"):
        return await _handle_config(state, request, path)
    if path.startswith("/id/"):
        return await _handle_id(state, request, path)
    if path == "/load":
        return await _handle_load(state, request)
    if path == "/adapt":
        return await _handle_adapt(request)
    if path == "/stop":
        return await _handle_stop(state, request, cors)
    if path == "/metrics":
        text = await state.controller.metrics_text()
        resp = web.Response(body=text.encode("utf-8"))
        resp.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return resp
    if path == "/reverse_proxy/upstreams":
        if request.method != "GET":
            raise APIError(405, "method not allowed")
        upstreams = await state.controller.upstreams()
        return web.Response(body=go_json(upstreams), content_type="application/json")
    reporter = getattr(state.controller, "certificates", None)
    if path == "/pyproxy/certificates" and reporter is not None:
        # Not a Caddy endpoint (Caddy has none for this): pyproxy's own namespace, so it can
        # never collide with a Caddy route added later.
        if request.method != "GET":
            raise APIError(405, "method not allowed")
        certificates = await reporter()
        return web.Response(body=go_json(certificates), content_type="application/json")
    return web.Response(status=404, text="404 page not found\n")


def _etag(path: str, body: bytes) -> str:
    # Caddy hashes with xxhash64; any stable 64-bit digest serves If-Match, which only ever
    # compares against ETags this server produced.
    return f'"{path} {hashlib.blake2b(body, digest_size=8).hexdigest()}"'


async def _handle_config(state: AdminState, request: web.Request, path: str) -> web.StreamResponse:
    method = request.method
    if method == "GET":
        root = {CONFIG_KEY: await state.controller.current_config()}
        try:
            body = go_json(config_access(root, "GET", path))
        except TraversalError as exc:
            raise APIError(400, str(exc)) from None
        resp = web.Response(body=body, content_type="application/json")
        resp.headers["Etag"] = _etag(path, body)
        return resp
    if method not in ("POST", "PUT", "PATCH", "DELETE"):
        raise APIError(405, f"method {method} not allowed")
    value: Any = None
    if method != "DELETE":
        content_type = request.headers.get("Content-Type", "")
        if "/json" not in content_type:
            raise APIError(
                400, f"unacceptable content-type: {content_type}; 'application/json' required"
            )
        body = await request.read()
        if body:
            try:
                value = decode_json_body(body)
            except ValueError as exc:
                raise APIError(500, str(exc)) from None
    force = request.headers.get("Cache-Control") == "must-revalidate"
    async with state.load_lock:
        current = await state.controller.current_config()
        root = {CONFIG_KEY: copy.deepcopy(current)}
        if_match = request.headers.get("If-Match", "")
        if if_match:
            _check_if_match(root, if_match)
        try:
            config_access(root, method, path, value)
        except TraversalError as exc:
            raise APIError(exc.status or 500, str(exc)) from None
        new = root.get(CONFIG_KEY)
        await _load(state, {} if new is None else new, force, current, prefix="")
    return web.Response()


def _check_if_match(root: dict[str, Any], header: str) -> None:
    if len(header) < 2 or header[0] != '"' or header[-1] != '"':
        raise APIError(400, "malformed If-Match header; expect quoted string")
    parts = header[1:-1].split()
    if len(parts) != 2:
        raise APIError(400, 'malformed If-Match header; expect format "<path> <hash>"')
    try:
        body = go_json(config_access(root, "GET", parts[0]))
    except TraversalError as exc:
        raise APIError(exc.status or 500, str(exc)) from None
    if _etag(parts[0], body) != header:
        raise APIError(412, "If-Match header did not match current config hash")


async def _handle_id(state: AdminState, request: web.Request, path: str) -> web.StreamResponse:
    parts = path.split("/")
    if len(parts) < 3 or parts[2] == "":
        raise APIError(400, "request path is missing object ID")
    try:
        index = index_ids(await state.controller.current_config())
    except ValueError as exc:
        raise APIError(500, str(exc)) from None
    expanded = index.get(parts[2])
    if expanded is None:
        raise APIError(404, f"unknown object ID '{parts[2]}'")
    return await _handle_config(state, request, posixpath.join(expanded, *parts[3:]))


async def _handle_load(state: AdminState, request: web.Request) -> web.StreamResponse:
    if request.method != "POST":
        raise APIError(405, "method not allowed")
    body = await request.read()
    warnings: list[dict[str, Any]] = []
    content_type = request.headers.get("Content-Type", "")
    if content_type:
        body, warnings = _adapt_by_content_type(content_type, body)
    config: Any = {}
    if body.strip():
        try:
            config = decode_json_body(body)
        except ValueError as exc:
            raise APIError(400, f"loading config: {exc}") from None
    force = request.headers.get("Cache-Control") == "must-revalidate"
    async with state.load_lock:
        current = await state.controller.current_config()
        await _load(state, {} if config is None else config, force, current)
    log.info("load complete")
    if warnings:
        # Caddy answers a load with adapter warnings by sending them as the body.
        return web.Response(body=go_json(warnings).rstrip(b"\n"), content_type="application/json")
    return web.Response()


async def _load(
    state: AdminState,
    config: Any,
    force: bool,
    current: dict[str, Any],
    prefix: str = "loading config: ",
) -> None:
    """Hand a new config to the engine; skip an unchanged one unless forced (Caddy compares the
    encoded JSON, which is what comparing decoded values amounts to)."""
    if not isinstance(config, dict):
        raise APIError(400, f"{prefix}loading new config: config must be a JSON object")
    try:
        index_ids(config)
    except ValueError as exc:
        raise APIError(400, f"{prefix}indexing config: {exc}") from None
    disabled, listen, _, _ = _admin_settings(config.get("admin"))
    if not disabled:
        # Check the admin address before the switch: once the engine runs the new config, the
        # listener follows it, and a bad address would leave no way to fix the config.
        try:
            parse_admin_listen(listen)
        except ConfigError as exc:
            raise APIError(400, f"{prefix}loading new config: {exc}") from None
    if not force and config == current:
        log.info("config is unchanged")
        return
    try:
        await state.controller.load(config, force)
    except asyncio.CancelledError:
        raise
    except (ConfigError, ReloadError) as exc:
        raise APIError(400, f"{prefix}loading new config: {_config_error_text(exc)}") from None
    except Exception as exc:
        # Not an expected config failure: keep the traceback in the log, give the client the
        # message (Caddy reports every load failure as a 400 from /load).
        log.exception("loading new config failed")
        raise APIError(400, f"{prefix}loading new config: {_config_error_text(exc)}") from None
    if state.persist_path is not None:
        persist_config(config, state.persist_path)
    if state.on_admin_change is not None and config.get("admin") != current.get("admin"):
        state.spawn(state.on_admin_change(config.get("admin")))


def _adapt_by_content_type(content_type: str, body: bytes) -> tuple[bytes, list[dict[str, Any]]]:
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("/json"):
        return body, []
    _, slash, adapter = media.partition("/")
    if not slash:
        raise APIError(400, "malformed Content-Type")
    if adapter != "caddyfile":
        raise APIError(400, f"unrecognized config adapter '{adapter}'")
    from config.adapt import adapt_caddyfile

    try:
        config, warnings = adapt_caddyfile(body.decode("utf-8"), "Caddyfile")
    except UnicodeDecodeError as exc:
        raise APIError(
            400, f"adapting config using {adapter} adapter: invalid UTF-8: {exc}"
        ) from None
    except ConfigError as exc:
        raise APIError(
            400, f"adapting config using {adapter} adapter: {_config_error_text(exc)}"
        ) from None
    out = []
    for w in warnings:
        item: dict[str, Any] = {}
        for key in ("file", "line", "directive", "message"):
            val = getattr(w, key, None)
            if val:  # Go's omitempty
                item[key] = val
        out.append(item)
    return go_json(config), out


async def _handle_adapt(request: web.Request) -> web.StreamResponse:
    if request.method != "POST":
        raise APIError(405, "method not allowed")
    body = await request.read()
    result, warnings = _adapt_by_content_type(request.headers.get("Content-Type", ""), body)
    out: dict[str, Any] = {"result": json.loads(result) if result.strip() else None}
    if warnings:
        out["warnings"] = warnings
    return web.Response(body=go_json(out), content_type="application/json")


async def _handle_stop(
    state: AdminState, request: web.Request, cors: dict[str, str]
) -> web.StreamResponse:
    if request.method != "POST":
        raise APIError(405, "method not allowed")
    log.info("stopping: received /stop")
    # Answer first, then stop: the caller (`pyproxy stop`) waits for this response.
    response = web.Response()
    response.headers.update(cors)
    await response.prepare(request)
    await response.write_eof()
    state.spawn(state.controller.stop())
    return response


# --- the listener -------------------------------------------------------------------------


def _bind_admin_sockets(addr: AdminAddress) -> list[socket.socket]:
    """Bound, listening sockets for the admin address. `localhost` gets 127.0.0.1 and, when the
    host has IPv6, ::1 on the same port (clients resolve localhost either way); an empty host
    gets one dual-stack socket."""
    if addr.is_unix:
        return [_bind_unix(addr.host)]
    if addr.host == "localhost":
        first = _bind_tcp("127.0.0.1", addr.port)
        socks = [first]
        if addr.network != "tcp4":
            with contextlib.suppress(OSError):
                socks.append(_bind_tcp("::1", first.getsockname()[1]))
        return socks
    if addr.host == "" and addr.network != "tcp4":
        try:
            return [_bind_tcp("::", addr.port, dual_stack=True)]
        except OSError:
            pass
    host = addr.host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        family = {"tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}.get(addr.network, 0)
        info = socket.getaddrinfo(host, addr.port, family, socket.SOCK_STREAM)
        host = str(info[0][4][0])
    return [_bind_tcp(host, addr.port)]


def _bind_tcp(host: str, port: int, dual_stack: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            # Remove a stale socket file, but never one a live server still answers on.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)
            finally:
                probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _admin_settings(admin_config: Any) -> tuple[bool, str, bool, list[str] | None]:
    """(disabled, listen, enforce_origin, origins) from the config's `admin` object."""
    admin = admin_config if isinstance(admin_config, Mapping) else {}
    origins = admin.get("origins")
    return (
        bool(admin.get("disabled")),
        str(admin.get("listen") or ""),
        bool(admin.get("enforce_origin")),
        [str(o) for o in origins] if isinstance(origins, list) else None,
    )


class AdminServer:
    """The admin listener of the running process. It follows the `admin` object of each loaded
    config: a changed `listen` binds the new address first and then closes the old one; changed
    origins apply in place; `disabled` closes it."""

    def __init__(
        self,
        controller: AdminController,
        *,
        metrics: ProxyMetrics | None = None,
        persist: bool = True,
    ) -> None:
        self.controller = controller
        self.metrics = metrics
        self.persist = persist
        self.address: AdminAddress | None = None
        self.sockets: list[socket.socket] = []
        self._runner: web.AppRunner | None = None
        self._state: AdminState | None = None
        self._settings: tuple[bool, str, bool, list[str] | None] | None = None
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        """The bound TCP port (useful with `listen: "127.0.0.1:0"`), 0 for unix sockets."""
        if not self.sockets or self.address is None or self.address.is_unix:
            return 0
        return int(self.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """A base URL a client on this machine can use (tcp listeners)."""
        assert self.address is not None
        host = self.address.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        bracketed = f"[{host}]" if ":" in host else host
        return f"http://{bracketed}:{self.port}"

    async def update(self, admin_config: Any) -> None:
        """Apply a (new) config's `admin` object. Raises ConfigError or OSError when a new
        listener cannot be bound; the old listener then stays."""
        async with self._lock:
            await self._apply(admin_config)

    async def _apply(self, admin_config: Any) -> None:
        settings = _admin_settings(admin_config)
        if settings == self._settings and (self.serving or settings[0]):
            return
        disabled, listen, enforce_origin, origins = settings
        if disabled:
            log.warning("admin endpoint disabled")
            await self._close_runner(delay=True)
            self._settings = settings
            return
        addr = parse_admin_listen(listen)
        if self.serving and self._state is not None and addr == self.address:
            # Same socket: swap the request policy in place, no rebind.
            bound = self._bound_address()
            self._state.policy = AccessPolicy.for_listener(bound, enforce_origin, origins)
            self._settings = settings
            return
        socks = _bind_admin_sockets(addr)
        try:
            bound = AdminAddress(
                addr.network,
                addr.host,
                0 if addr.is_unix else int(socks[0].getsockname()[1]),
            )
            # Port 0 resolves at bind time; the allowed Host values use the real port.
            app = build_admin_app(
                self.controller,
                listen=str(bound),
                enforce_origin=enforce_origin,
                origins=origins,
                metrics=self.metrics,
                persist_path=autosave_path() if self.persist else None,
            )
            state = admin_state(app)
            state.on_admin_change = self.update
            runner = web.AppRunner(
                app,
                access_log=None,
                handle_signals=False,
                shutdown_timeout=ADMIN_SHUTDOWN_TIMEOUT_S,
            )
            await runner.setup()
            for sock in socks:
                await web.SockSite(runner, sock).start()
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        await self._close_runner(delay=self.serving)
        self._runner, self._state, self.sockets = runner, state, socks
        self.address, self._settings = addr, settings
        log.info(
            "admin endpoint started: address=%s enforce_origin=%s origins=%s",
            bound,
            enforce_origin,
            [a.host if not a.scheme else f"{a.scheme}://{a.host}" for a in state.policy.allowed],
        )
        if not state.policy.enforce_host:
            log.warning("admin endpoint on open interface; host checking disabled: %s", bound)

    def _bound_address(self) -> AdminAddress:
        assert self.address is not None
        if self.address.is_unix:
            return self.address
        return AdminAddress(self.address.network, self.address.host, self.port)

    async def _close_runner(self, delay: bool) -> None:
        runner, socks, address = self._runner, self.sockets, self.address
        self._runner, self._state, self.sockets = None, None, []
        if runner is None:
            return

        async def shutdown() -> None:
            if delay:
                # The request that caused this change is still being answered on this runner.
                await asyncio.sleep(REPLACE_DELAY_S)
            await runner.cleanup()
            for sock in socks:
                sock.close()
            if address is not None and address.is_unix:
                with contextlib.suppress(OSError):
                    os.unlink(address.host)

        if delay:
            task = asyncio.ensure_future(shutdown())
            _PENDING.add(task)
            task.add_done_callback(_PENDING.discard)
        else:
            await shutdown()

    async def close(self) -> None:
        """Stop serving (waits up to ADMIN_SHUTDOWN_TIMEOUT_S for requests in progress)."""
        async with self._lock:
            await self._close_runner(delay=False)
            self._settings = None


_PENDING: set[asyncio.Task[None]] = set()


async def start_admin_server(
    controller: AdminController,
    admin_config: dict[str, Any] | None,
    *,
    metrics: ProxyMetrics | None = None,
    persist: bool = True,
) -> AdminServer:
    """Start the admin endpoint for a config's `admin` object (None: the default,
    `localhost:2019`). With `disabled: true` the returned server is not serving (a later
    `update` can start it). Raises ConfigError for a bad `listen`, OSError when it cannot bind —
    Caddy refuses to start in both cases."""
    server = AdminServer(controller, metrics=metrics, persist=persist)
    await server.update(admin_config)
    return server
