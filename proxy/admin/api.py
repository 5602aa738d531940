"""The admin API's HTTP surface as an aiohttp application: routing, Caddy's error shape
(`{"error": "…"}`), CORS, `/load`, `/adapt`, `/config/`, `/id/`, `/stop`, `/metrics`,
`/reverse_proxy/upstreams` and pyproxy's own `/pyproxy/certificates`.

Behaviour follows Caddy's admin.go, caddyconfig/load.go and reverseproxy/admin.go; status codes
and messages are Caddy's unless a comment says otherwise. Config traversal and mutation work on a
copy of the current config, and the result is handed to `AdminController.load` whole, so the
engine has one way in for every config change.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from config.errors import ConfigError
from proxy.admin.autosave import persist_config
from proxy.admin.config_paths import (
    CONFIG_KEY,
    TraversalError,
    config_access,
    decode_json_body,
    go_json,
    index_ids,
)
from proxy.admin.controller import AdminController, ReloadError
from proxy.admin.errors import APIError
from proxy.admin.origins import AccessPolicy, admin_settings, parse_admin_listen
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.metrics import ProxyMetrics

log = logging.getLogger("pyproxy.admin")

# Caddy reads at most 100 MB of config from a request body.
MAX_CONFIG_BYTES = 100 * 1024 * 1024


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
        origin = state.policy.check(request.headers)
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
    disabled, listen, _, _ = admin_settings(config.get("admin"))
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
