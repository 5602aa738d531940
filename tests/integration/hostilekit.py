"""Differential harness for hostile HTTP/1.1 input: what pyproxy's rules say a byte stream
means, what an independent origin read after pyproxy forwarded it, and what the client got.

- `RecordingOrigin`: an origin on h11 (a strict HTTP/1.1 parser that shares no code with
  pyproxy): it records every request as it read it (method, target, body) and answers 200
  with `X-Seen: <n>`.
- `expected_requests(data)`: how pyproxy's own wire rules (proxy/http/wire.py, the Request
  target rules) split `data` into requests, and how it refuses the rest.
- `exchange(port, data, ...)`: sends `data` on one connection and reads the responses.
- `check_one(...)`: the invariants — no request executed at the origin whose response the
  client did not get; the origin read exactly the requests (method, target, body) pyproxy
  parsed, in order; nothing after a refusal; no hang.

Used by tests/integration/test_hostile_input.py (a fixed hypothesis budget in CI) and
bench/fuzz_requests.py (the long run).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from dataclasses import dataclass, field

import h11


@dataclass
class Seen:
    method: str
    target: str
    body: bytes
    headers: list[tuple[str, str]]


class RecordingOrigin:
    """An h11 origin on 127.0.0.1 that records what it read; one thread per connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.seen: list[Seen] = []
        self.rejected = 0  # requests h11 could not parse: pyproxy forwarded something invalid
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=2 << 20)
        with conn:
            while not self._stop:
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError:
                    with self.lock:
                        self.rejected += 1
                    return
                if event is h11.NEED_DATA:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    h.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    req = event
                    body = b""
                    while True:
                        try:
                            ev = h.next_event()
                        except h11.RemoteProtocolError:
                            with self.lock:
                                self.rejected += 1
                            return
                        if ev is h11.NEED_DATA:
                            try:
                                data = conn.recv(65536)
                            except OSError:
                                return
                            if not data:
                                return  # the body never completed: nothing executed
                            h.receive_data(data)
                        elif isinstance(ev, h11.Data):
                            body += ev.data
                        elif isinstance(ev, h11.EndOfMessage):
                            break
                    with self.lock:
                        n = len(self.seen)
                        self.seen.append(
                            Seen(
                                req.method.decode("latin-1"),
                                req.target.decode("latin-1"),
                                body,
                                [(k.decode(), v.decode("latin-1")) for k, v in req.headers],
                            )
                        )
                    text = b"seen %d" % n
                    out = h.send(
                        h11.Response(
                            status_code=200,
                            headers=[("Content-Length", str(len(text))), ("X-Seen", str(n))],
                        )
                    )
                    if req.method != b"HEAD":
                        out = (out or b"") + (h.send(h11.Data(data=text)) or b"")
                    out += h.send(h11.EndOfMessage()) or b""
                    try:
                        conn.sendall(out)
                    except OSError:
                        return
                    if h.our_state is h11.MUST_CLOSE:
                        return
                    try:
                        h.start_next_cycle()
                    except h11.LocalProtocolError:
                        return
                elif isinstance(event, h11.ConnectionClosed):
                    return

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(5)


@dataclass
class Expected:
    """How pyproxy's rules read one connection's bytes."""

    requests: list[tuple[str, str, bytes]] = field(default_factory=list)  # method, uri, body
    refusal: int | None = None  # the status of the refusal that ends the connection
    stops: bool = False  # the last request says close, or is an Upgrade: nothing after it
    incomplete: bool = False  # the bytes end inside a head or a body


def expected_requests(data: bytes, max_header_bytes: int = 1 << 20) -> Expected:
    # Imported here so that the origin and the readers work without them (e.g. to run the
    # regression tests against an older tree).
    from proxy.http.request import Request
    from proxy.http.wire import CHUNKED, HEAD_SLACK_BYTES, ChunkedDecoder, parse_request_head
    from proxy.http.wire_errors import RequestError

    exp = Expected()
    pos = 0
    limit = max_header_bytes + HEAD_SLACK_BYTES
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(data) - pos > limit:
                exp.refusal = 431
            else:
                exp.incomplete = True
            return exp
        if end + 4 - pos > limit:
            exp.refusal = 431
            return exp
        try:
            head = parse_request_head(data, pos, end)
            req = Request(head.method, head.target, "HTTP/1.1", None, "", 0, "http")
        except RequestError as exc:
            exp.refusal = exc.status
            return exp
        pos = end + 4
        body = b""
        if head.length == CHUNKED:
            dec = ChunkedDecoder(max_header_bytes)
            out: list[bytes] = []
            try:
                pos = dec.feed(data, pos, out)
            except RequestError as exc:
                exp.refusal = exc.status
                return exp
            if not dec.done:
                exp.incomplete = True
                return exp
            body = b"".join(out)
        elif head.length:
            if len(data) - pos < head.length:
                exp.incomplete = True
                return exp
            body = data[pos : pos + head.length]
            pos += head.length
        exp.requests.append((req.method, req.uri, body))
        if not head.keep_alive or head.upgrade:
            exp.stops = True
            return exp
    return exp


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def read_responses(
    sock: socket.socket, methods: list[str], want: int, timeout_s: float
) -> tuple[list[Response], bool]:
    """Read up to `want` final responses (1xx skipped); (responses, hung)."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    out: list[Response] = []
    closed = False

    def fill() -> bool:
        nonlocal buf, closed
        left = deadline - time.monotonic()
        if left <= 0 or closed:
            return False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            return False
        if not chunk:
            closed = True
            return False
        buf += chunk
        return True

    while len(out) < want:
        while b"\r\n\r\n" not in buf:
            if not fill():
                return out, not closed
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.decode("latin-1").lower()] = v.strip().decode("latin-1")
        if 100 <= status < 200:
            continue
        method = methods[len(out)] if len(out) < len(methods) else "GET"
        body = b""
        if method == "HEAD" or status in (204, 304):
            pass
        elif "content-length" in headers:
            n = int(headers["content-length"])
            while len(buf) < n:
                if not fill():
                    return out, not closed
            body, buf = buf[:n], buf[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while b"\r\n" not in buf:
                    if not fill():
                        return out, not closed
                size_line, _, buf = buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(buf) < size + 2:
                    if not fill():
                        return out, not closed
                body += buf[:size]
                buf = buf[size + 2 :]
                if size == 0:
                    break
        else:
            while fill():
                pass
            body, buf = buf, b""
        out.append(Response(status, headers, body))
    return out, False


@dataclass
class Verdict:
    ok: bool
    reason: str = ""


def check_one(
    proxy_port: int, origin: RecordingOrigin, data: bytes, timeout_s: float = 5.0
) -> Verdict:
    """Send `data` through pyproxy on one connection; check it against the invariants."""
    exp = expected_requests(data)
    before = origin.count()
    rejected_before = origin.rejected
    want = len(exp.requests) + (1 if exp.refusal is not None else 0)
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout_s) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        methods = [m for m, _u, _b in exp.requests]
        responses, hung = read_responses(s, methods, want, timeout_s)
    if hung:
        return Verdict(False, f"hang: {len(responses)} of {want} responses")
    # The origin's records for this connection (inputs run one at a time).
    deadline = time.monotonic() + timeout_s
    from_origin = [r for r in responses if "x-seen" in r.headers]
    while origin.count() - before < len(from_origin) and time.monotonic() < deadline:
        time.sleep(0.01)
    with origin.lock:
        seen = origin.seen[before:]
    if origin.rejected != rejected_before:
        return Verdict(False, "the origin could not parse what pyproxy forwarded")
    if len(seen) > len(from_origin):
        return Verdict(False, f"executed {len(seen)} at the origin, client got {len(from_origin)}")
    got = [(s.method, s.body) for s in seen]
    want_seen = [(m, b) for m, _u, b in exp.requests][: len(seen)]
    if got != want_seen:
        return Verdict(False, f"origin read {got!r}, pyproxy parsed {want_seen!r}")
    if len(responses) < want:
        return Verdict(False, f"{len(responses)} responses for {want} expected")
    if exp.refusal is not None and responses[-1].status != exp.refusal:
        return Verdict(False, f"refusal {responses[-1].status}, expected {exp.refusal}")
    return Verdict(True)


# -- a plain random generator (the hypothesis strategies in test_hostile_input.py mirror it) --

METHODS = ["GET", "POST", "PUT", "HEAD", "FOO", "DELETE", "OPTIONS", "PATCH"]
PATHS = ["/", "/a", "/a/b?x=1", "/a%20b", "/a/../b", "//x", "/a;b", "/x#f", "/%2e%2e/", "*"]
PATHS += ["/%zz", "/a\\b", "/caf\xc3\xa9", "/admin.", "/a?q=%00", "http://h/p", "/" + "a" * 300]
FIELDS = [
    b"Accept: */*",
    b"X-A: b",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: Upgrade",
    b"Upgrade: foo",
    b"Upgrade: websocket",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: Chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding:chunked",
    b"Transfer-Encoding: \x0bchunked",
    b"Content-Length: 0",
    b"Content-Length: 3",
    b"Content-Length: 5",
    b"Content-Length: 50",
    b"Content-Length: 3, 3",
    b"Content-Length: +3",
    b"Content-Length: 0x3",
    b"Content-Length:  3 ",
    b"Expect: 100-continue",
    b"Expect: nonsense",
    b"Host: b",
    b"Host: a b",
    b"Host: a, b",
    b"Host: x/../y",
    b"Host: [::1]:80",
    b"X-Forwarded-For: 1.2.3.4",
    b"X-Forwarded-Host: evil",
    b"Te: trailers",
    b"Te: gzip",
    b"Trailer: X",
    b"Keep-Alive: timeout=5",
    b"Proxy-Connection: keep-alive",
    b"Connection: Host",
    b"Connection: X-A, close",
    b" X-Fold: y",
    b"\tX-Fold: y",
    b"X-Bad : y",
    b"X-Ctl: a\x01b",
    b"X-Lf: a\nb",
    b"X-Cr: a\rb",
    b"X-Nul: a\x00b",
    b"X-Obs: caf\xc3\xa9",
    b": empty-name",
    b"NoColon",
]
BENIGN_FIELDS = [
    b"Accept: */*",
    b"User-Agent: fuzz/1",
    b"Cookie: a=b; c=d",
    b"X-Request-Id: 42",
    b"Content-Type: text/plain",
    b"Connection: keep-alive",
    b"Content-Length: 3",
    b"Transfer-Encoding: chunked",
]
BODIES = [
    b"",
    b"abc",
    b"hello",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"3;ext=1\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"5\r\nhelloX\r\n0\r\n\r\n",
    b"zz\r\n",
    b"3\nabc\n0\n\n",
    b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"RTSP/1.0", b""]


def random_request(rng: random.Random) -> bytes:
    method = rng.choice(METHODS).encode()
    path = rng.choice(PATHS).encode("latin-1")
    version = rng.choice(VERSIONS)
    line = b"%s %s %s" % (method, path, version) if version else b"%s %s" % (method, path)
    fields = [b"Host: a"] if rng.random() < 0.9 else []
    # Mostly well-formed requests, with a hostile field now and then, so that many reach the
    # origin and the differential check has something to compare.
    for _ in range(rng.randint(0, 4)):
        fields.append(rng.choice(BENIGN_FIELDS if rng.random() < 0.7 else FIELDS))
    rng.shuffle(fields)
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + rng.choice(BODIES)


def random_connection(rng: random.Random) -> bytes:
    data = b"".join(random_request(rng) for _ in range(rng.randint(1, 3)))
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        i = rng.randrange(len(data))
        op = rng.randrange(3)
        b = bytes([rng.randrange(256)])
        if op == 0:
            data = data[:i] + b + data[i + 1 :]
        elif op == 1:
            data = data[:i] + b + data[i:]
        else:
            data = data[:i] + data[i + 1 :]
    return data
