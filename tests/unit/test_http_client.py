"""The upstream (client) protocol: response events, HEAD, 1xx, close-delimited bodies, and
responses that break the framing rules (never kept for reuse) or are refused."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.http.client import UpstreamConnection, transfer_coding_error, upgrade_refusal


class Pool:
    read_timeout_s = 0.0
    write_timeout_s = 0.0

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


# -- framing violations: the response stands, the connection is not kept ---------------------


@pytest.mark.parametrize(
    ("raw", "events"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\nhello", [("head", 204, 0)]),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", [("head", 304, 0)]),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello", [("head", 200, 2), ("body", b"he")]),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n",
            [("head", 200, 2), ("body", b"ok")],
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nokX",
            [("head", 200, 2), ("body", b"ok")],
        ),
    ],
)
def test_bytes_past_the_end_end_the_response_without_keepalive(
    raw: bytes, events: list[Any]
) -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(raw)
    assert call.events == [*events, ("end", False)]


class Reuser(Call):
    """Starts the next request on the connection as soon as its response ended (what a
    pipelined request does through the pool)."""

    def __init__(self, conn: UpstreamConnection, nxt: Call) -> None:
        super().__init__()
        self.conn = conn
        self.nxt = nxt

    def on_response_end(self, keep_alive: bool) -> None:
        super().on_response_end(keep_alive)
        self.conn.start(self.nxt, head_only=False)


def test_response_end_comes_after_the_whole_read_is_parsed() -> None:
    conn, _ = make()
    nxt = Call()
    call = Reuser(conn, nxt)
    conn.start(call, head_only=False)
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
    )
    assert call.events == [("head", 200, 2), ("body", b"ok"), ("end", False)]
    assert nxt.events == []  # nothing of that read reached the next request


def test_complete_read_then_next_request_reuses_the_connection() -> None:
    conn, _ = make()
    nxt = Call()
    call = Reuser(conn, nxt)
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert call.events[-1] == ("end", True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
    assert nxt.events == [("head", 200, 4), ("body", b"next"), ("end", True)]


@pytest.mark.parametrize(
    "rest",
    [
        b"hello",  # the body its Content-Length announced
        b"5\r\nhello\r\n0\r\n\r\n",  # a chunked body
        b"0\r\n\r\n",  # an empty chunked body is still a body
    ],
)
def test_head_response_followed_by_a_body_is_not_kept(rest: bytes) -> None:
    framing = b"Content-Length: 5" if rest == b"hello" else b"Transfer-Encoding: chunked"
    conn, call = make()
    conn.start(call, head_only=True)
    conn.data_received(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n" + rest)
    assert call.events[-1] == ("end", False)
    assert ("body", b"hello") not in call.events


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_head_response_without_body_is_kept(head: bytes) -> None:
    conn, call = make()
    conn.start(call, head_only=True)
    conn.data_received(head)
    assert call.events[-1] == ("end", True)


def test_head_response_with_content_length_zero_then_more_bytes_is_not_kept() -> None:
    conn, call = make()
    conn.start(call, head_only=True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert call.events == [("head", 200, 0), ("end", False)]


def test_bytes_while_idle_close_the_connection() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert call.events[-1] == ("end", True)
    conn.data_received(b"\r\n")
    assert conn.closed


# -- refused responses -------------------------------------------------------------------------


def test_five_informational_responses_then_the_final_one() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(
        b"HTTP/1.1 103 Early Hints\r\n\r\n" * 5 + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    )
    assert call.events == [("head", 200, 1), ("body", b"x"), ("end", True)]


def test_sixth_informational_response_is_refused() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 3)
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n" * 3)
    assert call.events == [("bad", "too many 1xx informational responses")]


def test_informational_count_is_per_request() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 5 + b"HTTP/1.1 204 No\r\n\r\n")
    call2 = Call()
    conn.start(call2, head_only=False)
    conn.data_received(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 5 + b"HTTP/1.1 204 No\r\n\r\n")
    assert call2.events == [("head", 204, 0), ("end", True)]


@pytest.mark.parametrize(
    ("status_line", "reason"),
    [
        (b"HTTP/1.1 099 Odd", "malformed HTTP status code 099"),
        (b"HTTP/1.1 000 Zero", "malformed HTTP status code 000"),
    ],
)
def test_status_below_100_is_refused(status_line: bytes, reason: str) -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(status_line + b"\r\nContent-Length: 2\r\n\r\nok")
    assert call.events == [("bad", reason)]


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 99 Odd", b"HTTP/1.1 1000 Odd"])
def test_status_not_three_digits_is_malformed(status_line: bytes) -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(status_line + b"\r\nContent-Length: 2\r\n\r\nok")
    assert len(call.events) == 1 and call.events[0][1].startswith("malformed response")


def test_unsupported_transfer_encoding_is_refused() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nall of it")
    assert call.events == [("bad", "unsupported transfer encoding: 'identity'")]


def test_http10_transfer_encoding_is_ignored_and_body_ends_with_connection() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: identity\r\n\r\nall of it")
    conn.connection_lost(None)
    assert call.events == [("head", 200, None), ("body", b"all of it"), ("end", False)]


def test_chunked_body_cut_short_is_lost_not_complete() -> None:
    conn, call = make()
    conn.start(call, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    conn.connection_lost(None)
    assert call.events[-1] == ("lost", True)


# -- pure decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_11", "codings", "reason"),
    [
        (True, [], ""),
        (True, [b"chunked"], ""),
        (True, [b"Chunked"], ""),
        (True, [b"identity"], "unsupported transfer encoding: 'identity'"),
        (True, [b"gzip"], "unsupported transfer encoding: 'gzip'"),
        (True, [b"gzip, chunked"], "unsupported transfer encoding: 'gzip, chunked'"),
        (True, [b"chunked", b"chunked"], "too many transfer encodings: 'chunked, chunked'"),
        (False, [b"identity"], ""),
        (False, [b"gzip"], ""),
        (False, [b"chunked"], "chunked transfer coding in an HTTP/1.0 response"),
        (False, [b"gzip, Chunked"], "chunked transfer coding in an HTTP/1.0 response"),
    ],
)
def test_transfer_coding_error(http_11: bool, codings: list[bytes], reason: str) -> None:
    assert transfer_coding_error(http_11, codings) == reason


UPGRADE_WS = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]


@pytest.mark.parametrize(
    ("requested", "fields", "refused"),
    [
        (b"websocket", UPGRADE_WS, False),
        (b"WebSocket", UPGRADE_WS, False),
        (
            b"websocket",
            [(b"connection", b"keep-alive, upgrade"), (b"upgrade", b"websocket")],
            False,
        ),
        (b"", UPGRADE_WS, True),  # the request asked for no upgrade
        (b"h2c", UPGRADE_WS, True),
        (b"websocket", [(b"Upgrade", b"websocket")], True),  # no Connection: upgrade
        (b"websocket", [(b"Connection", b"Upgrade")], True),  # no protocol
        (b"", [], True),
        (b"web\x01socket", [(b"Connection", b"Upgrade"), (b"Upgrade", b"web\x01socket")], True),
    ],
)
def test_upgrade_refusal(
    requested: bytes, fields: list[tuple[bytes, bytes]], refused: bool
) -> None:
    assert bool(upgrade_refusal(requested, fields)) == refused
