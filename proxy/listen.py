"""Listening sockets from the model's `listen` addresses.

- `:PORT` (no host) listens on IPv4 *and* IPv6: one IPv6 socket with IPV6_V6ONLY off where the
  OS allows it (like Go's net.Listen("tcp", ":PORT")), otherwise an IPv4 and an IPv6 socket.
- an explicit address opens one socket; `[::]` is made V6ONLY when `0.0.0.0` on the same port
  is also requested, so the two can coexist.
- `unix/PATH` opens a Unix socket (`bind_unix`). With several workers every socket has
  SO_REUSEPORT and each worker gets its own set, so the kernel spreads connections across
  workers.
A port that can't be bound raises ListenError naming the address, before anything is served.

`bind_tcp` and `bind_unix` are the one socket binder of the process: the site listeners
(`open_listeners`) and the admin endpoint (proxy.admin.server) both bind through them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
import stat
from collections.abc import Collection, Iterable

from config.model import NetworkAddress

BACKLOG = 1024

# Caddy's server `keepalive_interval` (modules/caddyhttp/app.go hands it to Go's
# net.ListenConfig.KeepAliveConfig): unset or zero means 15 s; negative disables keep-alive
# probes. The idle time before the first probe and the probe count are Go's defaults (15 s, 9),
# as pyproxy refuses `keepalive_idle` and `keepalive_count` by name.
DEFAULT_KEEPALIVE_INTERVAL_S = 15.0
DEFAULT_KEEPALIVE_IDLE_S = 15.0
DEFAULT_KEEPALIVE_COUNT = 9


class ListenError(OSError):
    pass


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tcp_socket(
    family: int, host: str, port: int, reuse_port: bool, v6only: bool | None
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def set_tcp_keepalive(sock: socket.socket, interval_s: float | None) -> None:
    """Configure TCP keep-alive on an accepted connection, as Caddy does on every accept.

    Only TCP sockets: a Unix socket has no keep-alive. Options the OS lacks are skipped (Linux
    has all three; TCP_KEEPIDLE is missing on macOS, which calls it TCP_KEEPALIVE).
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    interval = interval_s if interval_s else DEFAULT_KEEPALIVE_INTERVAL_S
    if interval < 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # The kernel takes whole seconds; Go rounds a period up to the next second (roundDurationUp).
    for name, value in (
        ("TCP_KEEPIDLE", math.ceil(DEFAULT_KEEPALIVE_IDLE_S)),
        ("TCP_KEEPINTVL", math.ceil(interval)),
        ("TCP_KEEPCNT", DEFAULT_KEEPALIVE_COUNT),
    ):
        opt = getattr(socket, name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def _bind_any(port: int, reuse_port: bool) -> list[socket.socket]:
    if socket.has_ipv6:
        try:
            return [_tcp_socket(socket.AF_INET6, "::", port, reuse_port, v6only=False)]
        except OSError as exc:
            if exc.errno not in (97, 99, 22):  # EAFNOSUPPORT, EADDRNOTAVAIL, EINVAL: no IPv6
                raise
    return [_tcp_socket(socket.AF_INET, "0.0.0.0", port, reuse_port, None)]


def bind_tcp(
    network: str,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    v4_any_ports: Collection[int] = (),
) -> list[socket.socket]:
    """Listening sockets for one `network/host:port` (network tcp, tcp4 or tcp6, as in Caddy's
    addresses). Raises ListenError naming the address.

    - no host: tcp4 listens on 0.0.0.0, tcp6 on [::] only (V6ONLY, like Go's "tcp6"), tcp on
      both, with one dual-stack socket where the OS allows it;
    - `[::]` is dual-stack, unless `port` is in `v4_any_ports` (0.0.0.0 on that port is opened
      too), then V6ONLY so the two can coexist;
    - a host name listens on its first address of the network's family (Go's net.Listen).
    """
    try:
        if not host:
            if network == "tcp4":
                return [_tcp_socket(socket.AF_INET, "0.0.0.0", port, reuse_port, None)]
            if network == "tcp6":
                return [_tcp_socket(socket.AF_INET6, "::", port, reuse_port, True)]
            return _bind_any(port, reuse_port)
        bind_host = host
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            family = {"tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}.get(network, 0)
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            ip = ipaddress.ip_address(str(infos[0][4][0]))
            bind_host = str(ip)
        if ip.version == 6:
            v6only = None
            if ip.is_unspecified:
                v6only = port in v4_any_ports
            return [_tcp_socket(socket.AF_INET6, bind_host, port, reuse_port, v6only)]
        return [_tcp_socket(socket.AF_INET, bind_host, port, reuse_port, None)]
    except OSError as exc:
        raise ListenError(
            exc.errno or 0, f"listening on {_fmt(host, port)}: {exc.strerror or exc}"
        ) from exc


def bind_unix(path: str, *, take_over: bool) -> socket.socket:
    """A listening Unix socket at `path`. Raises ListenError naming the address.

    An existing file at `path` is removed first when `take_over` is true (site listeners: the
    process that binds now owns the path, as a restarted Caddy does). With `take_over` false
    (the admin endpoint) only a stale socket is removed, one no server answers on, so a second
    instance cannot steal a live admin socket: it gets "Address already in use" instead.
    """
    try:
        if take_over:
            if os.path.exists(path):
                os.unlink(path)
        else:
            _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ListenError(exc.errno or 0, f"listening on unix/{path}: {exc.strerror}") from exc
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        # Not a socket: binding fails with EADDRINUSE and names the path; never delete a file.
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    finally:
        probe.close()


def open_listeners(
    addrs: Iterable[NetworkAddress],
    reuse_port: bool = False,
    v4_any_ports: set[int] | None = None,
) -> list[socket.socket]:
    """`v4_any_ports`: ports some other address of the same config binds on 0.0.0.0 (when
    addresses are opened one at a time, as a reload does), so `[::]` there is made V6ONLY."""
    addrs = list(addrs)
    v4_any_ports = set(v4_any_ports or ()) | {
        p for a in addrs if not a.is_unix and a.host == "0.0.0.0" for p in a.ports()
    }
    socks: list[socket.socket] = []
    seen: set[tuple[str, str, int]] = set()
    try:
        for addr in addrs:
            if addr.is_unix:
                socks.append(bind_unix(addr.host, take_over=True))
                continue
            for port in addr.ports():
                key = (addr.network, addr.host, port)
                if key in seen:
                    continue
                seen.add(key)
                socks += bind_tcp(
                    addr.network,
                    addr.host,
                    port,
                    reuse_port=reuse_port,
                    v4_any_ports=v4_any_ports,
                )
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks
