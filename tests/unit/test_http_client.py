"""The upstream (client) protocol: response events, HEAD, 1xx, close-delimited bodies."""

from __future__ import annotations

from typing import Any

from proxy.http.client import UpstreamConnection


class Pool:
    def forget(self, conn: Any) -> None:
        pass


class Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Call:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_response_head(self, status: int, length: int | None) -> None:
        self.events.append(("head", status, length))

    def on_response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_response_end(self, keep_alive: bool) -> None:
        self.events.append(("end", keep_alive))

    def on_upgrade(self, rest: bytes) -> None:
        self.events.append(("upgrade", rest))

    def upstream_lost(self, exc: Exception | None, got_bytes: bool) -> None:
        self.events.append(("lost", got_bytes))

    def upstream_bad_response(self, reason: str) -> None:
        self.events.append(("bad", reason))

    def upstream_pause(self) -> None: ...
    def upstream_resume(self) -> None: ...

    def begin_batch(self) -> bool:
        return False

    def end_batch(self) -> None: ...


def make() -> tuple[UpstreamConnection, Call]:
    conn = UpstreamConnection(Pool())
    conn.connection_made(Transport())
    call = Call()
    return conn, call


def test_keepalive_response_then_reuse() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert call.events == [("head", 200, 3), ("body", b"abc"), ("end", True)]
    call2 = Call()
    conn.start(call2, head_only=False)
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert call2.events == [("head", 204, 0), ("end", True)]


def test_head_response_ends_at_head_and_connection_is_reusable() -> None:
    conn, call = make()
    conn.start(call, head_only=True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert call.events == [("head", 200, 1000), ("end", True)]
    call2 = Call()
    conn.start(call2, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert call2.events[-1] == ("end", True) and ("body", b"ok") in call2.events


def test_informational_responses_are_skipped() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    )
    assert call.events == [("head", 200, 1), ("body", b"x"), ("end", True)]


def test_close_delimited_body_ends_with_connection() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.0 200 OK\r\n\r\nsome data")
    conn.connection_lost(None)
    assert call.events == [("head", 200, None), ("body", b"some data"), ("end", False)]


def test_lost_before_response_reports_no_bytes() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.connection_lost(ConnectionResetError())
    assert call.events == [("lost", False)]


def test_malformed_response() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    assert call.events[0][0] == "bad"


def test_switching_protocols_becomes_upgrade() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n\x81\x02hi"
    )
    assert call.events == [("head", 101, None), ("upgrade", b"\x81\x02hi")]
