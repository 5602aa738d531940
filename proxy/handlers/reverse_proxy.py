"""`reverse_proxy` handler: stream requests to upstreams over keepalive pools.

What it does, following Caddy's reverseproxy module:
- picks an upstream with the selection policy (proxy.upstream.selection), honouring health
  (passive counts, active checker) and retries (proxy.upstream.retry);
- sends the request with hop-by-hop fields removed (RFC 9110 §7.6.1 plus Caddy's list),
  X-Forwarded-For/Proto/Host set (appended/kept only when the peer is a trusted proxy), the
  Host passed through, `header_up` ops applied; the body streams with back-pressure both ways;
- streams the response back with hop-by-hop fields removed and `header_down` applied; every read
  event is written through at once, so SSE and unknown-length responses are never held back;
- 101 Switching Protocols turns both connections into a byte tunnel (RFC 9110 §7.8), but only
  to the protocol the request asked for (as Go's ReverseProxy); any other 101 is a 502;
- a request that fails on a *reused* connection before any response byte arrived (the upstream
  closed it while idle) is retried once on a fresh connection when that is safe (idempotent
  method, replayable body) — Go's transport does the same, so no spurious 502;
- the handler's own `rewrite` (Caddyfile `method` / `rewrite`) changes only what goes
  upstream, applied once before the first attempt (Caddy's prepareRequest on a clone);
- like Go's transport, asks for gzip when the client's request has no Accept-Encoding, no
  Range and is not HEAD, and then decodes a gzip answer for the client, streaming and in
  bounded pieces; a malformed one aborts the client's response (current Caddy panics with
  http.ErrAbortHandler; 2.6.2 ended the chunked body as if complete). `compression off`
  (transport.compression false) turns it off;
- errors: dial failure/reset/bad response → 502, timeouts → 504, no upstream → 503;
  a client that goes away is logged as 499.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import ssl
import zlib
from typing import Any, Final

from config.errors import ConfigError
from config.model import ReverseProxyHandler, RewriteHandler, _load_handler
from proxy.handlers.headers import compile_ops
from proxy.handlers.rewrite import Rewrite
from proxy.http.client import UpstreamConnection, upgrade_refusal
from proxy.http.exchange import Exchange, HandlerError
from proxy.http.fields import (
    HOP_BY_HOP_FIELDS,
    HOP_BY_HOP_NAMES,
    PLAIN_CONNECTION_NAMES,
    SERVER_FIELD,
    SERVER_FIELD_LINE,
    X_FORWARDED_NAMES,
    status_line_bytes,
)
from proxy.http.request import Request
from proxy.http.target import ascii_query
from proxy.placeholders import compile_template
from proxy.route import compile_match
from proxy.tls import CURVES as TLS_CURVES
from proxy.tls import groups_problem, set_groups
from proxy.upstream.errors import DialError, DialTimeout
from proxy.upstream.health import ActiveHealthChecker, PassiveHealth
from proxy.upstream.pool import ConnectionPool, IdleLimit
from proxy.upstream.retry import FailureKind, RetryPolicy
from proxy.upstream.selection import SelectionPolicy, make_selection_policy
from proxy.upstream.upstream import Upstream, dial_address

log = logging.getLogger("pyproxy.reverse_proxy")
# zlib's gzip container; decoded output is produced (and sent on) in pieces of at most this
# size, so one highly compressed read cannot expand into memory at once.
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_GUNZIP_CHUNK: Final = 64 * 1024
# Decoded bytes relayed per upstream read (or continuation) before the rest waits for the next
# loop turn: the client's writes are batched until then, so only then can it push back.
_GUNZIP_BUDGET: Final = 1024 * 1024
_base_response_cookie = SelectionPolicy.response_cookie

# Content-Length is not hop-by-hop, but the framing of our response is ours to write.
HOP_BY_HOP_B: Final = HOP_BY_HOP_FIELDS | {b"content-length"}
# The fields an Exchange starts with (proxy/http/exchange.py): the fast path writes them as is.
_DEFAULT_RESP_HEADERS: Final = [SERVER_FIELD]
# Connection tokens that name no field (proxy.http.fields), as text; "" from a stray comma.
_PLAIN_CONN_STR: Final = PLAIN_CONNECTION_NAMES | {""}
# Request fields the head builder must look at (all others are copied as they are).
_SPECIAL_REQUEST_FIELDS: Final = (
    HOP_BY_HOP_NAMES | X_FORWARDED_NAMES | {"host", "expect", "content-length"}
)
# RFC 9110 §9.2.2: retrying these cannot change the outcome.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Keep a copy of up to this much request body so a failed attempt can be replayed.
REPLAY_BODY_BYTES: Final = 64 * 1024
# Caddy's -1 (unlimited) request/response buffering, capped: never hold an unbounded body.
MAX_BUFFER_BYTES: Final = 16 * 1024 * 1024
# A positive flush_interval coalesces response writes, but never more than this much.
COALESCE_BYTES: Final = 64 * 1024


def _buffer_limit(n: int) -> int:
    return MAX_BUFFER_BYTES if n < 0 else min(n, MAX_BUFFER_BYTES)


def build_ssl_context(tls: Any, where: str = "transport.tls") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.curves:
        # Caddy's TLSConfig.MakeTLSClientConfig: only caddytls.SupportedCurves, in the given
        # order; a list this libssl cannot apply is a config error, as for the listeners.
        groups: list[str] = []
        for i, name in enumerate(tls.curves):
            group = TLS_CURVES.get(name)
            if group is None:
                raise ConfigError(f"{where}.curves[{i}]: unsupported curve: {name}")
            if group not in groups:
                groups.append(group)
        problem = groups_problem(tuple(groups))
        if problem is not None:
            raise ConfigError(f"{where}.curves: {problem}")
        set_groups(ctx, groups)
    for path in tls.root_ca_pem_files:
        ctx.load_verify_locations(cafile=path)
    for der_b64 in tls.root_ca_pool:
        ctx.load_verify_locations(cadata=base64.b64decode(der_b64))
    if tls.client_certificate_file:
        ctx.load_cert_chain(tls.client_certificate_file, tls.client_certificate_key_file or None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class ReverseProxy:
    """The compiled handler; one per `reverse_proxy` object in the config."""

    __slots__ = (
        "_dynamic_cache",
        "_pools",
        "active",
        "cfg",
        "compression",
        "ctx",
        "dynamic",
        "fast_response",
        "flush_s",
        "header_down",
        "header_timeout_s",
        "header_up",
        "idle_limit",
        "loop",
        "needs_clock",
        "passive",
        "policy",
        "req_buffers",
        "resp_buffers",
        "retry",
        "retry_match",
        "rewrite",
        "rewrite_drops_body",
        "server_name",
        "ssl",
        "trusted",
        "up_vars",
        "upstreams",
    )

    def __init__(self, cfg: ReverseProxyHandler, ctx: Any) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.loop: asyncio.AbstractEventLoop = ctx.loop
        passive_cfg = cfg.health_checks.passive
        self.passive = PassiveHealth(passive_cfg) if passive_cfg is not None else None
        self.upstreams = [
            Upstream.from_config(u, passive=passive_cfg, registry=ctx.registry)
            for u in cfg.upstreams
            if u.address is not None
        ]
        if cfg.dynamic_upstreams is not None:
            raise ConfigError(f"{cfg.where}.dynamic_upstreams: not supported by pyproxy yet")
        if cfg.handle_response:
            raise ConfigError(f"{cfg.where}.handle_response: not supported by pyproxy yet")
        self.dynamic = [
            compile_template(u.dial, empty_unknown=True) for u in cfg.upstreams if "{" in u.dial
        ]
        self._dynamic_cache: dict[str, Upstream] = {}
        lb = cfg.load_balancing
        self.policy = make_selection_policy(lb.selection_policy)
        self.retry = RetryPolicy.from_config(lb)
        self.retry_match = compile_match(lb.retry_match) if lb.retry_match else None
        tls = cfg.transport.tls
        self.ssl = build_ssl_context(tls, f"{cfg.where}.transport.tls") if tls is not None else None
        self.server_name = tls.server_name if tls is not None and tls.server_name else None
        self.header_up = compile_ops(cfg.headers_request)
        if tls is not None:
            # Current Caddy: an HTTPS transport sets Host to the upstream's host:port by default
            # (HTTPTransport.RequestHeaderOps), applied before the user's header_up ops.
            host_op = compile_ops({"set": {"Host": ["{http.reverse_proxy.upstream.hostport}"]}})
            user_op = self.header_up
            if host_op is not None and user_op is not None:
                self.header_up = lambda h, r, a=host_op, b=user_op: b(a(h, r), r)
            else:
                self.header_up = host_op or user_op
        self.header_down = compile_ops(cfg.headers_response)
        self.rewrite: Rewrite | None = None
        self.rewrite_drops_body = False
        if cfg.rewrite:
            # The `method` / `rewrite` subdirectives: Caddy's rewrite.Rewrite, validated like
            # the rewrite handler and applied by the same code (proxy.handlers.rewrite).
            rw = _load_handler({**cfg.rewrite, "handler": "rewrite"}, f"{cfg.where}.rewrite")
            assert isinstance(rw, RewriteHandler)
            self.rewrite = Rewrite(rw)
            # prepareRequest: a rewrite to GET or HEAD sends no body upstream.
            self.rewrite_drops_body = rw.method in ("GET", "HEAD")
        self.up_vars: dict[str, dict[str, str]] = {}
        self.req_buffers = _buffer_limit(cfg.request_buffers)
        self.resp_buffers = _buffer_limit(cfg.response_buffers)
        # flush_interval: 0 and -1 both write every upstream read through at once (Caddy's
        # default buffers up to Go's 4 KiB writer; ours is never later than that).
        self.flush_s = cfg.flush_interval_s if cfg.flush_interval_s > 0 else 0.0
        self.header_timeout_s = cfg.transport.response_header_timeout_s
        self.compression = cfg.transport.compression
        self.needs_clock = self.retry.enabled or self.passive is not None
        nets = [*ctx.server_trusted, *cfg.trusted_proxies]
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in nets]
        self._pools: dict[str, ConnectionPool] = {}
        # keep_alive.max_idle_conns bounds the idle connections of all this transport's pools.
        max_idle = cfg.transport.max_idle_conns
        self.idle_limit = IdleLimit(max_idle) if max_idle > 0 else None
        active_cfg = cfg.health_checks.active
        self.active = (
            ActiveHealthChecker(
                active_cfg, self.upstreams, ssl_context=self.ssl, server_name=self.server_name
            )
            if active_cfg is not None
            else None
        )
        # Responses can skip the str header round trip when nothing may look at or change them.
        sets_cookie = (
            getattr(type(self.policy), "response_cookie", _base_response_cookie)
            is not _base_response_cookie
        )
        self.fast_response = self.header_down is None and not sets_cookie and not ctx.access_logged
        if self.active is not None:
            ctx.on_start.append(self.active.start)
            ctx.on_stop.append(self.active.stop)

    def serve(self, ex: Exchange) -> bool:
        ProxyCall(self, ex).start()
        return True

    # -- helpers used by ProxyCall -----------------------------------------------------------

    def select(self, req: Request) -> Upstream | None:
        pool = self.upstreams
        if self.dynamic:
            pool = list(pool)
            for tpl in self.dynamic:
                dial = tpl(req)
                up = self._dynamic_cache.get(dial)
                if up is None:
                    try:
                        # The model's parser, with its default port (443 for a TLS transport).
                        address = dial_address(dial, 443 if self.ssl is not None else 80)
                    except ValueError:
                        continue
                    up = Upstream(dial, address=address, state=self.ctx.registry.get(dial))
                    self._dynamic_cache[dial] = up
                pool.append(up)
        now = self.ctx.pools.now  # coarse (1 s) clock: enough for passive-health expiry
        if len(pool) == 1 and self.cfg.load_balancing.selection_policy is None:
            only = pool[0]
            return only if only.available(now) else None
        return self.policy.select(pool, req, now)

    def pool_for(self, up: Upstream) -> ConnectionPool:
        pool = self._pools.get(up.dial)
        if pool is None:
            t = self.cfg.transport
            handshake_s = t.tls.handshake_timeout_s if t.tls is not None else None
            key = (
                up.host,
                up.port,
                id(self.ssl) if self.ssl else 0,
                self.server_name,
                handshake_s,
                t.read_timeout_s,
                t.write_timeout_s,
                t.keepalive_probe_interval_s,
                self.idle_limit.key if self.idle_limit is not None else 0,
            )
            pool = self.ctx.pools.get(
                key,
                ssl_context=self.ssl,
                server_hostname=self.server_name,
                dial_timeout_s=t.dial_timeout_s,
                handshake_timeout_s=handshake_s,
                idle_timeout_s=t.keepalive_idle_s if t.keepalive_enabled else 0.0,
                max_idle=t.max_idle_conns_per_host,
                max_conns=t.max_conns_per_host,
                read_timeout_s=t.read_timeout_s,
                write_timeout_s=t.write_timeout_s,
                keepalive_probe_interval_s=t.keepalive_probe_interval_s,
                idle_limit=self.idle_limit,
            )
            self._pools[up.dial] = pool
        return pool

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in self.trusted)


class Tunnel:
    """Bytes both ways after 101 Switching Protocols, with back-pressure each way."""

    __slots__ = ("client", "handler", "timer", "upstream")

    def __init__(self, client: Any, upstream: UpstreamConnection) -> None:
        self.client = client
        self.upstream = upstream
        # The ReverseProxyHandler model that opened it: a reload keeps the tunnel open when the
        # new config has the same handler (proxy.worker).
        self.handler: Any = None
        # stream_timeout: Caddy (streaming.go handleUpgradeResponse) forcibly closes the
        # upgraded stream when it expires, however busy it is.
        self.timer: asyncio.TimerHandle | None = None

    def expire(self) -> None:
        self.timer = None
        self.upstream.close()
        self.client.close()

    def _cancel_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def from_client(self, data: bytes) -> None:
        self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        t = self.client.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def client_closed(self) -> None:
        self._cancel_timer()
        self.upstream.close()

    def upstream_closed(self) -> None:
        self._cancel_timer()
        self.client.close()

    def client_pause(self) -> None:
        self.upstream.pause_reading()

    def client_resume(self) -> None:
        self.upstream.resume_reading()

    def upstream_pause(self) -> None:
        self.client.pause_body()

    def upstream_resume(self) -> None:
        self.client.resume_body()


class ProxyCall:
    """One proxied request: attempts, body pumping, response relay. Not a Task: callbacks."""

    __slots__ = (
        "_dial_task",
        "_timer",
        "body_attached",
        "body_copy",
        "body_copy_bytes",
        "body_done",
        "body_mode",
        "buffering",
        "cl_override",
        "client_paused",
        "coalesce",
        "coalesce_bytes",
        "conn",
        "counted",
        "ex",
        "finished",
        "fresh_retry_used",
        "gunzip",
        "gz_end",
        "gz_seen",
        "gz_tail",
        "head",
        "head_time",
        "pool",
        "prebuf",
        "req",
        "requested_gzip",
        "resp_buf",
        "resp_buf_bytes",
        "resp_head",
        "resp_started",
        "retries",
        "rp",
        "start_time",
        "up_method",
        "up_path",
        "up_query",
        "upstream",
        "upstream_paused",
    )

    def __init__(self, rp: ReverseProxy, ex: Exchange) -> None:
        self.rp = rp
        self.ex = ex
        req = self.req = ex.req
        self.conn: UpstreamConnection | None = None
        self.upstream: Upstream | None = None
        self.pool: ConnectionPool | None = None
        # Only retries and passive health read the start time; skip the clock otherwise.
        self.start_time = rp.loop.time() if rp.needs_clock else 0.0
        self.head_time = 0.0
        self.retries = 0
        self.head: bytes | None = None
        if req.content_length:
            self.body_mode = 1
        elif req.chunked:
            self.body_mode = 2
        else:
            self.body_mode = 0
        # The method and target sent upstream (EscapedPath, RawQuery): the client's, unless the
        # handler's own rewrite changes them.
        self.up_method = req.method
        self.up_path = req.raw_path
        self.up_query = req.query
        if rp.rewrite is not None:
            self._rewrite_upstream(rp.rewrite, ex)
        self.body_copy: list[bytes] | None = [] if self.body_mode else None
        self.body_copy_bytes = 0
        self.body_done = not self.body_mode
        self.body_attached = False
        self.resp_started = False
        self.finished = False
        self.fresh_retry_used = False
        self.counted = False
        self.upstream_paused = False
        # request_buffers: body bytes held until the upstream connection gets the head.
        self.prebuf: list[bytes] | None = None
        self.buffering = False  # still collecting (raw, unframed) up to request_buffers
        self.cl_override: int | None = None  # Content-Length of a fully buffered body
        # response_buffers: the held head (status, length) and body.
        self.resp_buf: list[bytes] | None = None
        self.resp_buf_bytes = 0
        self.resp_head: tuple[int, int | None] | None = None
        # flush_interval > 0: response body bytes waiting for the interval to pass.
        self.coalesce: list[bytes] | None = None
        self.coalesce_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        # Go's transport gzip: asked for when the client did not (requestedGzip), then the
        # answer is decoded here. gz_tail: compressed input not decoded yet because the client
        # pushed back; gz_end: the upstream's end, held until that tail is decoded.
        self.requested_gzip = False
        self.gunzip: Any = None
        self.gz_seen = False
        self.gz_tail = b""
        self.gz_end: bool | None = None
        self.client_paused = False
        self._dial_task: asyncio.Task[None] | None = None
        ex.flow = self
        ex.on_client_gone = self.client_gone

    def _rewrite_upstream(self, rewrite: Rewrite, ex: Exchange) -> None:
        """Apply the handler's rewrite to what goes upstream only.

        Caddy's prepareRequest rewrites a clone of the request once, before the first attempt,
        so placeholders see the client's request and later handlers, logs and `header_down`
        still see it unchanged: here the request is rewritten in place and put back.
        """
        req = ex.req
        saved = (req.method, req.path, req.raw_path, req.query, req.uri)
        had_orig = "_orig_uri" in req.vars
        try:
            rewrite.serve(ex)
            self.up_method, self.up_path, self.up_query = req.method, req.raw_path, req.query
        finally:
            req.method, req.path, req.raw_path, req.query, req.uri = saved
            if not had_orig:
                for key in ("_orig_method", "_orig_uri", "_orig_path", "_orig_query"):
                    req.vars.pop(key, None)
        changed = (self.up_method, self.up_path, self.up_query) != (
            saved[0],
            saved[2],
            saved[3],
        )
        if changed and self.rp.rewrite_drops_body:
            self.body_mode = 0

    # -- attempts ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.body_mode and self.rp.req_buffers:
            # Caddy's request_buffers: read up to N body bytes before contacting the upstream,
            # so a body that fits is sent with a Content-Length instead of chunked.
            self.prebuf = []
            self.buffering = True
            self.body_attached = True
            self.req.attach_body(self)  # on_body / on_body_end call _request_buffered
            return
        self._attempt()

    def _request_buffered(self, complete: bool) -> None:
        raw = self.prebuf or []
        self.buffering = False
        data = b"".join(raw)
        if complete:
            self.body_mode = 1
            self.cl_override = len(data)
        elif self.body_mode == 2:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        framed = [data] if data else []
        self.prebuf = framed
        self.body_copy_bytes = len(data)
        self.body_copy = list(framed) if len(data) <= REPLAY_BODY_BYTES else None
        if not complete:
            # The rest streams once the upstream connection is ready; until then hold at most
            # one more read (the client is paused).
            self.req.pause_body()
        self._attempt()

    def _attempt(self) -> None:
        if self.finished:
            return
        rp = self.rp
        up = rp.select(self.req)
        if up is None:
            self._failed(FailureKind.NO_UPSTREAM, 503, "no upstreams available")
            return
        self.upstream = up
        uv = rp.up_vars.get(up.dial)
        if uv is None:
            uv = rp.up_vars[up.dial] = {
                "http.reverse_proxy.upstream.address": up.dial,
                "http.reverse_proxy.upstream.hostport": (
                    f"[{up.host}]:{up.port}" if ":" in up.host else f"{up.host}:{up.port}"
                ),
                "http.reverse_proxy.upstream.host": up.host,
                "http.reverse_proxy.upstream.port": str(up.port),
            }
        self.req.vars.update(uv)
        self.pool = pool = rp.pool_for(up)
        conn = pool.acquire_idle()
        if conn is not None:
            self._send(conn)
        else:
            self._dial()

    def _dial(self) -> None:
        self._dial_task = self.rp.loop.create_task(self._dial_async())

    async def _dial_async(self) -> None:
        pool = self.pool
        assert pool is not None
        try:
            conn = await pool.obtain()
        except DialTimeout as exc:
            self._dial_task = None
            self._dial_failed(504, str(exc))
            return
        except (DialError, OSError) as exc:
            self._dial_task = None
            self._dial_failed(502, str(exc))
            return
        self._dial_task = None
        if self.finished:
            pool.release(conn)
            return
        client = self.ex.conn
        owned = client.begin_batch()
        try:
            self._send(conn)
        finally:
            if owned:
                client.end_batch()

    def _dial_failed(self, status: int, message: str) -> None:
        if self.finished:
            return
        up = self.upstream
        if up is not None and self.rp.passive is not None:
            self.rp.passive.record_error(up, self.rp.loop.time())
        self._failed(FailureKind.DIAL, status, message)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        up = self.upstream
        if up is not None and not self.counted:
            up.inc()
            self.counted = True
        req = self.req
        conn.start(self, self.up_method == "HEAD", self.ex.conn)
        head = self.head
        if head is None:
            head = self.head = self._build_head()
        if not self.body_mode:
            conn.write(head)
        elif self.prebuf is not None:
            # First send after request_buffers: the buffered body goes with the head.
            pre, self.prebuf = self.prebuf, None
            conn.write(head + b"".join(pre))
            if not self.body_done:
                self.req.resume_body()
        elif self.body_attached:
            # A retry: replay the body received so far, the rest keeps streaming in.
            copy = self.body_copy or []
            conn.write(head + b"".join(copy))
        else:
            conn.write(head)
            self.body_attached = True
            req.attach_body(self)
        t = self.rp.header_timeout_s
        if t:
            self._timer = self.rp.loop.call_later(t, self._header_timeout)

    def _build_head(self) -> bytes:
        req = self.req
        rp = self.rp
        raw = req._raw
        if raw is not None and req._headers is None and not req._odd and rp.header_up is None:
            # Fast path: the fields are as the client sent them and none is hop-by-hop or
            # X-Forwarded-* (so trusted or not, nothing is kept from the client): forward the
            # serialized block as it is and add ours around it.
            if self.body_mode == 1:
                cl = req.content_length if self.cl_override is None else self.cl_override
                framing = f"Content-Length: {cl}\r\n\r\n"
            elif self.body_mode == 2:
                framing = "Transfer-Encoding: chunked\r\n\r\n"
            else:
                framing = "\r\n"
            host = req.host
            gzip_field = ""
            if rp.compression and self.up_method != "HEAD":
                fields = b"\n" + raw.lower()
                if b"\naccept-encoding:" not in fields and b"\nrange:" not in fields:
                    self.requested_gzip = True
                    gzip_field = "Accept-Encoding: gzip\r\n"
            query = self.up_query
            if not query.isascii():
                query = ascii_query(query)
            return b"".join(
                (
                    (
                        # raw_path is URL.EscapedPath(); "" (from "http://host") goes as "/"
                        # like Go's URL.RequestURI().
                        f"{self.up_method} {self.up_path or '/'}{'?' if query else ''}{query}"
                        " HTTP/1.1\r\n"
                        f"Host: {host or req.vars['http.reverse_proxy.upstream.hostport']}\r\n"
                    ).encode("latin-1"),
                    raw,
                    (
                        f"X-Forwarded-For: {req.remote_ip}\r\n"
                        f"X-Forwarded-Proto: {req.scheme}\r\n"
                        f"X-Forwarded-Host: {host}\r\n{gzip_field}{framing}"
                    ).encode("latin-1"),
                )
            )
        headers = req.headers
        if rp.header_up is not None:
            # header_up acts on the outgoing copy (Caddy clones the request).
            saved = req.headers
            req.headers = list(saved)
            headers = rp.header_up(req.headers, req)
            req.headers = saved
        trusted = req.vars.get("_trusted_proxy")
        if trusted is None:
            trusted = rp.is_trusted(req.remote_ip)
        # Go's URL.RequestURI(): EscapedPath() ("/" when empty) and the raw query (its
        # non-ASCII bytes escaped: see ascii_query).
        query = self.up_query if self.up_query.isascii() else ascii_query(self.up_query)
        target = (self.up_path or "/") + ("?" + query if query else "")
        parts = [f"{self.up_method} {target} HTTP/1.1\r\n"]
        host_sent = False
        prior_xff = ""
        xfp = xfh = ""
        conn_value = ""
        for k, v in headers:
            lk = k.lower()
            if lk in _SPECIAL_REQUEST_FIELDS:
                if lk in HOP_BY_HOP_NAMES:
                    if lk == "connection":
                        conn_value = f"{conn_value},{v}" if conn_value else v
                    elif lk == "te" and v.strip().lower() == "trailers":
                        parts.append(f"{k}: {v}\r\n")  # Caddy keeps `Te: trailers`
                    continue
                if lk in X_FORWARDED_NAMES:
                    if trusted:
                        if lk == "x-forwarded-for":
                            prior_xff = f"{prior_xff}, {v}" if prior_xff else v
                        elif lk == "x-forwarded-proto":
                            xfp = xfp or v
                        else:
                            xfh = xfh or v
                    continue
                if lk == "host":
                    host_sent = True
                else:
                    continue  # Expect (we answered 100-continue) / Content-Length (ours below)
            parts.append(f"{k}: {v}\r\n")
        if conn_value:
            # RFC 9110 §7.6.1: fields named in Connection are hop-by-hop too.
            # Host is never one of them: Go keeps it outside the header map (Request.Host),
            # so `Connection: Host` cannot make a request reach the origin without a Host.
            tokens = {t.strip().lower() for t in conn_value.split(",")} - _PLAIN_CONN_STR
            tokens.discard("host")
            if tokens:
                parts[1:] = [p for p in parts[1:] if p.partition(":")[0].lower() not in tokens]
        if not host_sent:
            # HTTP/1.0 without Host: Go's transport then sends the upstream address.
            parts.append(
                f"Host: {req.host or self.req.vars['http.reverse_proxy.upstream.hostport']}\r\n"
            )
        ip = req.remote_ip
        parts.append(f"X-Forwarded-For: {prior_xff + ', ' + ip if prior_xff else ip}\r\n")
        parts.append(f"X-Forwarded-Proto: {xfp or req.scheme}\r\n")
        parts.append(f"X-Forwarded-Host: {xfh or req.host}\r\n")
        if rp.compression and self.up_method != "HEAD":
            # net/http transport.go roundTrip: requestedGzip only when the outgoing request has
            # no Accept-Encoding (an empty value counts as none) and no Range, and is not HEAD.
            asked = False
            for k, v in headers:
                lk = k.lower()
                if (lk == "accept-encoding" and v) or lk == "range":
                    asked = True
                    break
            if not asked:
                self.requested_gzip = True
                parts.append("Accept-Encoding: gzip\r\n")
        if req.upgrade:
            up_value = req.header("Upgrade")
            if up_value:
                parts.append(f"Connection: Upgrade\r\nUpgrade: {up_value}\r\n")
        if self.body_mode == 1:
            cl = req.content_length if self.cl_override is None else self.cl_override
            parts.append(f"Content-Length: {cl}\r\n")
        elif self.body_mode == 2:
            parts.append("Transfer-Encoding: chunked\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    # -- request body (BodySink) -------------------------------------------------------------

    def on_body(self, data: bytes) -> None:
        if self.buffering:
            pre = self.prebuf
            assert pre is not None
            pre.append(data)
            self.body_copy_bytes += len(data)
            if self.body_copy_bytes >= self.rp.req_buffers:
                self._request_buffered(False)
            return
        if self.body_mode == 2:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        copy = self.body_copy
        if copy is not None:
            self.body_copy_bytes += len(data)
            if self.body_copy_bytes > REPLAY_BODY_BYTES:
                self.body_copy = None
            else:
                copy.append(data)
        conn = self.conn
        if conn is not None:
            conn.write(data)
        elif self.prebuf is not None:
            self.prebuf.append(data)

    def on_body_end(self) -> None:
        if self.buffering:
            self.body_done = True
            self._request_buffered(True)
            return
        if self.body_mode == 2:
            self.on_body_raw(b"0\r\n\r\n")
        self.body_done = True

    def on_body_raw(self, data: bytes) -> None:
        if self.body_copy is not None:
            self.body_copy.append(data)
        if self.conn is not None:
            self.conn.write(data)
        elif self.prebuf is not None:
            self.prebuf.append(data)

    # -- flow control ------------------------------------------------------------------------

    def upstream_pause(self) -> None:
        self.req.pause_body()

    def upstream_resume(self) -> None:
        self.req.resume_body()

    def client_pause(self) -> None:
        self.client_paused = True
        if self.conn is not None:
            self.upstream_paused = True
            self.conn.pause_reading()

    def client_resume(self) -> None:
        self.client_paused = False
        if self.gz_tail:
            self._drain_gz_tail()
            return
        if self.conn is not None and self.upstream_paused:
            self.upstream_paused = False
            self.conn.resume_reading()

    def begin_batch(self) -> bool:
        owned: bool = self.ex.conn.begin_batch()
        return owned

    def end_batch(self) -> None:
        self.ex.conn.end_batch()

    # -- response (ResponseSink) -------------------------------------------------------------

    def on_response_head(self, status: int, length: int | None) -> None:
        if status == 101:
            conn = self.conn
            refusal = upgrade_refusal(self._requested_upgrade(), conn.headers() if conn else [])
            if refusal:
                self.upstream_bad_response(refusal)
                return
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        self.resp_started = True
        rp = self.rp
        up = self.upstream
        if self.requested_gzip and self._upstream_gzipped():
            # Go's transport (persistConn.readLoop): the gzip it asked for is decoded and
            # Content-Encoding / Content-Length removed; the client gets the identity body.
            self.gunzip = zlib.decompressobj(_GZIP_WBITS)
            if status != 101:
                length = None
        if rp.passive is not None and up is not None:
            now = rp.loop.time()
            rp.passive.record_response(up, status, now - self.start_time, now)
        if rp.flush_s and length and self.req.method != "HEAD" and not self._is_event_stream():
            # Caddy's flushInterval: SSE and unknown-length responses are written at once.
            self.coalesce = []
        if rp.resp_buffers and status != 101:
            # Caddy's response_buffers: hold up to N bytes before answering the client.
            self.resp_head = (status, length)
            self.resp_buf = []
            return
        self._emit_head(status, length)

    def _upstream_gzipped(self) -> bool:
        conn = self.conn
        if conn is None:
            return False
        for k, v in conn.headers():
            if k.lower() == b"content-encoding":
                return v.strip().lower() == b"gzip"
        return False

    def _requested_upgrade(self) -> bytes:
        # Go's upgradeType of the outgoing request: the head builder sends Upgrade (with
        # Connection: Upgrade) only when the client's request is an upgrade.
        req = self.req
        if not req.upgrade:
            return b""
        return (req.header("Upgrade") or "").encode("latin-1")

    def _is_event_stream(self) -> bool:
        conn = self.conn
        if conn is None:
            return False
        for k, v in conn.headers():
            if k.lower() == b"content-type":
                return v.split(b";")[0].strip().lower() == b"text/event-stream"
        return False

    def _flush_coalesced(self) -> None:
        buf = self.coalesce
        if buf:
            self.coalesce = []
            self.coalesce_bytes = 0
            self.ex.send_body(b"".join(buf))

    def _flush_tick(self) -> None:
        self._timer = None
        if self.finished:
            return
        client = self.ex.conn
        owned = client.begin_batch()
        try:
            self._flush_coalesced()
        finally:
            if owned:
                client.end_batch()

    def _flush_response(self, complete: bool) -> None:
        head, self.resp_head = self.resp_head, None
        buf, self.resp_buf = self.resp_buf, None
        assert head is not None and buf is not None
        status, length = head
        if complete and length is None and self.req.method != "HEAD" and status >= 200:
            length = self.resp_buf_bytes  # the whole body is here: frame it with a length
        self._emit_head(status, length)
        if buf:
            self.ex.send_body(b"".join(buf))

    def _emit_head(self, status: int, length: int | None) -> None:
        rp = self.rp
        up = self.upstream
        ex = self.ex
        conn = self.conn
        if (
            rp.fast_response
            and ex.head_hooks is None
            and status != 101
            and conn is not None
            and not conn.conn_tokens
            and self.gunzip is None
        ):
            # Fast path: the upstream connection serialized the end-to-end fields already.
            self.req.vars["http.reverse_proxy.status_code"] = status
            pre = ex.resp_headers
            if pre == _DEFAULT_RESP_HEADERS:
                pre_b = SERVER_FIELD_LINE
            else:  # fields set before proxying (e.g. a non-deferred `header` handler)
                pre_b = "".join(f"{k}: {v}\r\n" for k, v in pre).encode("latin-1")
            ex.send_head_raw(
                status,
                status_line_bytes(status) + pre_b + b"".join(conn.lines),
                length,
                conn.has_date,
            )
            return
        raw = conn.headers() if conn is not None else []
        conn_tokens: set[bytes] = set()
        for k, v in raw:
            if len(k) == 10 and k.lower() == b"connection":
                conn_tokens.update(t.strip().lower() for t in v.split(b","))
        upgrade = status == 101 and self.req.upgrade
        headers: list[tuple[str, str]] = []
        for k, v in raw:
            lk = k.lower()
            if self.gunzip is not None and lk == b"content-encoding":
                continue  # decoded here
            if lk in HOP_BY_HOP_B or (conn_tokens and lk in conn_tokens):
                if upgrade and lk == b"upgrade":
                    headers.append(("Connection", "Upgrade"))
                    headers.append(("Upgrade", v.decode("latin-1")))
                continue
            headers.append((k.decode("latin-1"), v.decode("latin-1")))
        if rp.header_down is not None:
            headers = rp.header_down(headers, self.req)
        cookie_fn = getattr(rp.policy, "response_cookie", None)
        if cookie_fn is not None and up is not None:
            cookie = cookie_fn(up, self.req)
            if cookie:
                headers.append(("Set-Cookie", cookie))
        self.req.vars["http.reverse_proxy.status_code"] = status
        self.ex.send_head(status, headers, length)

    def on_response_body(self, data: bytes) -> None:
        if self.gunzip is not None:
            if self.gz_tail:
                self.gz_tail += data  # the client is still pushing back
            else:
                self._gunzip(data)
            return
        self._relay_body(data)

    def _gunzip(self, data: bytes) -> None:
        """Decode gzip input and relay it, at most _GUNZIP_CHUNK at a time; the rest waits in
        gz_tail while the client pushes back. Go's gzip.Reader reads concatenated members
        (multistream), so input after a member's end starts the next one; anything that is no
        gzip aborts the response like Caddy's copy error (502 before any byte was sent).
        """
        if data:
            self.gz_seen = True
        budget = _GUNZIP_BUDGET
        try:
            while data:
                d = self.gunzip
                if d.eof:
                    d = self.gunzip = zlib.decompressobj(_GZIP_WBITS)
                out = d.decompress(data, _GUNZIP_CHUNK)
                data = d.unused_data if d.eof else d.unconsumed_tail
                if out:
                    self._relay_body(out)
                    budget -= len(out)
                if self.finished:
                    return
                if data and (self.client_paused or budget <= 0):
                    self.gz_tail = data
                    conn = self.conn
                    if conn is not None and not self.upstream_paused:
                        self.upstream_paused = True
                        conn.pause_reading()
                    if not self.client_paused:
                        # Go on once this batch reached the client (client_resume otherwise).
                        self.rp.loop.call_soon(self._gunzip_more)
                    return
        except zlib.error as exc:
            self.upstream_bad_response(f"gzip: {exc}")

    def _gunzip_more(self) -> None:
        if self.finished or not self.gz_tail or self.client_paused:
            return
        client = self.ex.conn
        owned = client.begin_batch()
        try:
            self._drain_gz_tail()
        finally:
            if owned:
                client.end_batch()

    def _drain_gz_tail(self) -> None:
        tail, self.gz_tail = self.gz_tail, b""
        self._gunzip(tail)
        if self.finished or self.gz_tail:
            return
        end = self.gz_end
        if end is not None:
            self.gz_end = None
            self.on_response_end(end)
            return
        conn = self.conn
        if conn is not None and self.upstream_paused and not self.client_paused:
            self.upstream_paused = False
            conn.resume_reading()

    def _relay_body(self, data: bytes) -> None:
        buf = self.resp_buf
        if buf is not None:
            buf.append(data)
            self.resp_buf_bytes += len(data)
            if self.resp_buf_bytes >= self.rp.resp_buffers:
                self._flush_response(False)
            return
        co = self.coalesce
        if co is not None:
            co.append(data)
            self.coalesce_bytes += len(data)
            if self.coalesce_bytes >= COALESCE_BYTES:
                self._flush_coalesced()
            elif self._timer is None:
                self._timer = self.rp.loop.call_later(self.rp.flush_s, self._flush_tick)
            return
        self.ex.send_body(data)

    def on_response_end(self, keep_alive: bool) -> None:
        if self.finished:
            return
        gunzip = self.gunzip
        if gunzip is not None:
            if self.gz_tail:
                self.gz_end = keep_alive  # ends once the client took the decoded rest
                return
            if self.gz_seen and not gunzip.eof:
                # Go: io.ErrUnexpectedEOF from the gzip reader, a copy error.
                self.upstream_bad_response("gzip: unexpected end of the compressed body")
                return
        if self.resp_buf is not None:
            self._flush_response(True)  # while the upstream connection still holds the head
        if self.coalesce is not None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flush_coalesced()
            self.coalesce = None
        self.finished = True
        self._detach()
        self._uncount()
        conn, self.conn = self.conn, None
        if conn is not None and self.pool is not None:
            if keep_alive and self.body_done:
                if self.upstream_paused:
                    # The last bytes were already buffered when the client pushed back: a
                    # pooled connection must be reading again.
                    self.upstream_paused = False
                    conn.resume_reading()
                self.pool.release(conn)
            else:
                conn.close()
        self.ex.finish()

    def on_upgrade(self, rest: bytes) -> None:
        conn, self.conn = self.conn, None
        if conn is None or self.finished:
            return
        self.finished = True
        self._detach()
        self._uncount()
        client = self.ex.conn
        tunnel = Tunnel(client, conn)
        tunnel.handler = self.rp.cfg
        if self.rp.cfg.stream_timeout_s > 0:
            tunnel.timer = self.rp.loop.call_later(self.rp.cfg.stream_timeout_s, tunnel.expire)
        conn.tunnel = tunnel
        conn.call = None
        client.flush()
        client.start_tunnel(tunnel)
        if rest:
            tunnel.from_upstream(rest)

    def upstream_lost(self, exc: Exception | None, got_bytes: bool) -> None:
        if self.finished:
            return
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        conn, self.conn = self.conn, None
        if self.resp_started:
            # Mid-response: the client gets a truncated response, like Caddy.
            self.finished = True
            self._detach()
            self._uncount()
            self.ex.abort()
            return
        reused = conn is not None and conn.requests > 1
        if reused and not got_bytes and not self.fresh_retry_used and self._replayable():
            # The upstream closed an idle keepalive connection just as we used it.
            self.fresh_retry_used = True
            self._dial()
            return
        rp = self.rp
        if rp.passive is not None and self.upstream is not None:
            rp.passive.record_error(self.upstream, rp.loop.time())
        reason = (
            f"upstream closed the connection: {exc}" if exc else "upstream closed the connection"
        )
        self._failed(FailureKind.AFTER_SENT, 502, reason)

    def upstream_bad_response(self, reason: str) -> None:
        if self.finished:
            return
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        conn, self.conn = self.conn, None
        if conn is not None:
            # Whatever else the connection holds is not to be trusted: never reuse it.
            conn.call = None
            conn.abort()
        if self.resp_started:
            self.finished = True
            self._detach()
            self._uncount()
            self.ex.abort()
            return
        rp = self.rp
        if rp.passive is not None and self.upstream is not None:
            # Caddy counts every failed round trip (a malformed response is one) as a failure.
            rp.passive.record_error(self.upstream, rp.loop.time())
        self._failed(FailureKind.AFTER_SENT, 502, reason)

    def _header_timeout(self) -> None:
        self._timer = None
        if self.finished or self.resp_started:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.call = None
            conn.abort()
        rp = self.rp
        if rp.passive is not None and self.upstream is not None:
            rp.passive.record_error(self.upstream, rp.loop.time())
        self._failed(FailureKind.AFTER_SENT, 504, "timeout awaiting response headers")

    def _replayable(self) -> bool:
        req = self.req
        # Caddy decides on the clone that went upstream (its method may be rewritten).
        if self.up_method not in IDEMPOTENT and (
            # Go's transport also replays requests that carry an idempotency key.
            req.header("Idempotency-Key") is None and req.header("X-Idempotency-Key") is None
        ):
            return False
        return not self.body_mode or self.body_copy is not None

    def _failed(self, kind: FailureKind, status: int, message: str) -> None:
        if self.finished:
            return
        self._uncount()
        rp = self.rp
        if rp.retry.enabled and (kind is not FailureKind.AFTER_SENT or self._replayable()):
            rm = rp.retry_match
            decision = rp.retry.decide(
                retries_done=self.retries,
                elapsed_s=rp.loop.time() - self.start_time,
                method=self.req.method,
                failure=kind,
                retry_match=(lambda: bool(rm(self.req))) if rm is not None else None,
            )
            if decision:
                self.retries += 1
                self.conn = None
                if decision.wait_s > 0:
                    rp.loop.call_later(decision.wait_s, self._attempt)
                else:
                    self._attempt()
                return
        self.finished = True
        self._detach()
        up = self.upstream
        # Caddy logs the proxy's own view at debug; the error route logs `http.log.error`
        # once (proxy.logs.log_handler_error), so a failed request is reported once.
        log.debug("%s %s → %s: %s", self.req.method, self.req.uri, up.dial if up else "-", message)
        client = self.ex.conn
        owned = client.begin_batch()
        try:
            self.ex.fail(HandlerError(status, message))
        finally:
            if owned:
                client.end_batch()

    def _detach(self) -> None:
        # Break the call <-> exchange reference cycles so refcounting frees both right away
        # (no work left for the cyclic GC on the hot path).
        ex = self.ex
        ex.flow = None
        ex.on_client_gone = None

    def _uncount(self) -> None:
        if self.counted and self.upstream is not None:
            self.counted = False
            self.upstream.dec()

    def client_gone(self) -> None:
        """The client disconnected before the response was complete (logged as 499)."""
        if self.finished:
            return
        self.finished = True
        self._detach()
        self._uncount()
        if not self.ex.head_sent:
            self.ex.status = 499
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dial_task is not None:
            self._dial_task.cancel()
            self._dial_task = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.call = None
            conn.abort()
