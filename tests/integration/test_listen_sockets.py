"""proxy.listen's binder, the one the site listeners and the admin endpoint share (issue #14):
real sockets on loopback and in tmp_path, never on a wildcard address."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_admin_api import FakeEngine, make_config

from proxy.admin.origins import parse_admin_listen
from proxy.admin.server import bind_admin_sockets, start_admin_server
from proxy.listen import ListenError, bind_tcp, bind_unix


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    """Every socket a test binds, closed at teardown."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def _connect_unix(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(str(path))


def test_busy_tcp_port_names_the_address(opened: list[socket.socket]) -> None:
    opened += bind_tcp("tcp", "127.0.0.1", 0)
    port = opened[0].getsockname()[1]
    with pytest.raises(ListenError) as info:
        bind_tcp("tcp", "127.0.0.1", port)
    assert info.value.errno == errno.EADDRINUSE
    assert str(info.value.strerror).startswith(f"listening on 127.0.0.1:{port}: ")


@needs_ipv6
def test_ipv6_literal_is_named_in_brackets(opened: list[socket.socket]) -> None:
    opened += bind_tcp("tcp6", "::1", 0)
    assert opened[0].family == socket.AF_INET6
    port = opened[0].getsockname()[1]
    with pytest.raises(ListenError, match=rf"listening on \[::1\]:{port}: "):
        bind_tcp("tcp6", "::1", port)


def test_host_name_listens_on_its_address_of_the_network_family(
    opened: list[socket.socket],
) -> None:
    opened += bind_tcp("tcp4", "localhost", 0)
    assert (opened[0].family, opened[0].getsockname()[0]) == (socket.AF_INET, "127.0.0.1")


@needs_ipv6
def test_admin_localhost_listens_on_both_loopbacks_at_one_port(
    opened: list[socket.socket],
) -> None:
    opened += bind_admin_sockets(parse_admin_listen("localhost:0"))
    names = sorted((s.family, s.getsockname()[0]) for s in opened)
    assert names == [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    assert len({s.getsockname()[1] for s in opened}) == 1


def test_admin_tcp4_localhost_listens_on_ipv4_only(opened: list[socket.socket]) -> None:
    opened += bind_admin_sockets(parse_admin_listen("tcp4/localhost:0"))
    assert [(s.family, s.getsockname()[0]) for s in opened] == [(socket.AF_INET, "127.0.0.1")]


def test_admin_unix_socket_replaces_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nothing answers on it
    [sock] = bind_admin_sockets(parse_admin_listen(f"unix/{path}"))
    try:
        _connect_unix(path)
    finally:
        sock.close()


def test_admin_unix_socket_never_steals_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    [live] = bind_admin_sockets(parse_admin_listen(f"unix/{path}"))
    try:
        with pytest.raises(ListenError) as info:
            bind_admin_sockets(parse_admin_listen(f"unix/{path}"))
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value.strerror).startswith(f"listening on unix/{path}: ")
        _connect_unix(path)  # the first listener still owns the path
    finally:
        live.close()


def test_admin_unix_socket_never_deletes_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    with pytest.raises(ListenError, match=f"listening on unix/{path}: "):
        bind_unix(str(path), take_over=False)
    assert path.read_text() == "keep me"


def test_site_unix_socket_takes_over_the_path(tmp_path: Path) -> None:
    path = tmp_path / "site.sock"
    first = bind_unix(str(path), take_over=True)
    try:
        second = bind_unix(str(path), take_over=True)
        try:
            _connect_unix(path)
        finally:
            second.close()
    finally:
        first.close()


async def test_admin_endpoint_on_a_busy_port_names_the_address(
    opened: list[socket.socket],
) -> None:
    opened += bind_tcp("tcp4", "127.0.0.1", 0)
    port = opened[0].getsockname()[1]
    with pytest.raises(ListenError, match=rf"^\[Errno \d+\] listening on 127.0.0.1:{port}: "):
        await start_admin_server(
            FakeEngine(make_config()), {"listen": f"127.0.0.1:{port}"}, persist=False
        )
