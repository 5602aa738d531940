"""Listener sharing (proxy.control): a worker's listening sockets, copied to the supervisor over
a real SEQPACKET socketpair, kept open there and described to a replacement worker."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest

from proxy.control import (
    MAX_FDS_PER_MESSAGE,
    ControlError,
    ListenerCopies,
    listener_share_pair,
    parse_listener_spec,
    share_listeners,
    withdraw_listeners,
)

KEY_A = ("tcp", "127.0.0.1", 0, 0)
KEY_B = ("unix", "/run/x.sock", 0, 0)


def listening(n: int = 1) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)
    return socks


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    supervisor_end, worker_end = listener_share_pair()
    supervisor_end.setblocking(False)
    yield supervisor_end, worker_end
    supervisor_end.close()
    worker_end.close()


def test_shared_sockets_outlive_the_worker_copies(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    supervisor_end, worker_end = pair
    (original,) = listening()
    port = original.getsockname()[1]
    share_listeners(worker_end, KEY_A, [original])
    copies = ListenerCopies()
    assert copies.receive(supervisor_end)
    (copy,) = copies.by_address[KEY_A]
    assert copy.fileno() != original.fileno()
    original.close()  # the worker dies
    # The supervisor's copy is the same kernel socket: still listening, still queueing.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        conn, _ = copy.accept()
        conn.close()
    copies.close()
    assert copies.by_address == {}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_withdraw_closes_the_copies(pair: tuple[socket.socket, socket.socket]) -> None:
    supervisor_end, worker_end = pair
    a, b = listening(2)
    share_listeners(worker_end, KEY_A, [a])
    share_listeners(worker_end, KEY_B, [b])
    withdraw_listeners(worker_end, KEY_A)
    copies = ListenerCopies()
    assert copies.receive(supervisor_end)
    assert list(copies.by_address) == [KEY_B]
    a.close()
    b.close()
    copies.close()


def test_a_port_range_goes_in_parts(pair: tuple[socket.socket, socket.socket]) -> None:
    supervisor_end, worker_end = pair
    socks = listening(MAX_FDS_PER_MESSAGE + 5)
    share_listeners(worker_end, KEY_A, socks)
    copies = ListenerCopies()
    assert copies.receive(supervisor_end)
    got = copies.by_address[KEY_A]
    assert [s.getsockname() for s in got] == [s.getsockname() for s in socks]
    # Sharing the address again replaces the copies instead of adding to them.
    share_listeners(worker_end, KEY_A, socks[:2])
    assert copies.receive(supervisor_end)
    assert len(copies.by_address[KEY_A]) == 2
    for s in socks:
        s.close()
    copies.close()


def test_end_of_file_when_the_worker_end_closes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    supervisor_end, worker_end = pair
    (s,) = listening()
    share_listeners(worker_end, KEY_A, [s])
    worker_end.close()
    copies = ListenerCopies()
    # What was sent before the close is still delivered, then the end.
    assert not copies.receive(supervisor_end)
    assert list(copies.by_address) == [KEY_A]
    s.close()
    copies.close()


def test_spec_and_fds_rebuild_the_table(pair: tuple[socket.socket, socket.socket]) -> None:
    supervisor_end, worker_end = pair
    a = listening(3)
    (b,) = listening()
    share_listeners(worker_end, KEY_B, [b])
    share_listeners(worker_end, KEY_A, a)
    copies = ListenerCopies()
    copies.receive(supervisor_end)
    spec = json.loads(json.dumps(copies.spec()))
    assert spec == [[*KEY_A, 3], [*KEY_B, 1]]
    # What a replacement does with its copies of the descriptors, in fds() order.
    dups = [os.dup(fd) for fd in copies.fds()]
    rebuilt = dict(parse_listener_spec(spec, dups))
    assert {k: [s.getsockname() for s in v] for k, v in rebuilt.items()} == {
        KEY_A: [s.getsockname() for s in a],
        KEY_B: [b.getsockname()],
    }
    for socks in rebuilt.values():
        for s in socks:
            s.close()
    for s in [*a, b]:
        s.close()
    copies.close()


@pytest.mark.parametrize(
    ("spec", "fds", "error"),
    [
        ({"a": 1}, [], "not a list"),
        ([["tcp", "h", 1]], [], "bad entry"),
        ([["tcp", "h", "1", 1, 1]], [7], "bad address"),
        ([["tcp", "h", 1, 1, 2]], [7], "2 descriptors for"),
        ([], [7], "1 descriptors left over"),
    ],
)
def test_bad_spec_is_refused(spec: object, fds: list[int], error: str) -> None:
    with pytest.raises(ControlError, match=error):
        list(parse_listener_spec(spec, fds))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"op": "keep", "address": ["tcp"]}', "bad address"),
        (b'{"op": "frobnicate", "address": ["tcp", "", 1, 1]}', "unexpected"),
    ],
)
def test_malformed_messages_are_errors_and_their_sockets_closed(
    pair: tuple[socket.socket, socket.socket], message: bytes, error: str
) -> None:
    supervisor_end, worker_end = pair
    (s,) = listening()
    socket.send_fds(worker_end, [message], [s.fileno()])
    share_listeners(worker_end, KEY_A, [s])
    copies = ListenerCopies()
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ControlError, match=error):
        copies.receive(supervisor_end)
    assert len(os.listdir("/proc/self/fd")) == open_before  # the copy it carried is closed
    # The next message is still there and applies.
    assert copies.receive(supervisor_end)
    assert list(copies.by_address) == [KEY_A]
    assert len(os.listdir("/proc/self/fd")) == open_before + 1
    s.close()
    copies.close()
