"""Listening sockets from the model's `listen` addresses.

- `:PORT` (no host) listens on IPv4 *and* IPv6: one IPv6 socket with IPV6_V6ONLY off where the
  OS allows it (like Go's net.Listen("tcp", ":PORT")), otherwise an IPv4 and an IPv6 socket.
- an explicit address opens one socket; `[::]` is made V6ONLY when `0.0.0.0` on the same port
  is also requested, so the two can coexist.
- `unix/PATH` opens a Unix socket. With several workers every socket has SO_REUSEPORT and each
  worker gets its own set, so the kernel spreads connections across workers.
A port that can't be bound raises ListenError naming the address, before anything is served.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
from collections.abc import Iterable

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
                path = addr.host
                if os.path.exists(path):
                    os.unlink(path)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.bind(path)
                    s.listen(BACKLOG)
                    s.setblocking(False)
                except OSError as exc:
                    s.close()
                    raise ListenError(
                        exc.errno, f"listening on unix/{path}: {exc.strerror}"
                    ) from exc
                socks.append(s)
                continue
            for port in addr.ports():
                key = (addr.network, addr.host, port)
                if key in seen:
                    continue
                seen.add(key)
                host = addr.host
                try:
                    if not host:
                        if addr.network == "tcp4":
                            socks.append(
                                _tcp_socket(socket.AF_INET, "0.0.0.0", port, reuse_port, None)
                            )
                        elif addr.network == "tcp6":
                            socks.append(_tcp_socket(socket.AF_INET6, "::", port, reuse_port, True))
                        else:
                            socks += _bind_any(port, reuse_port)
                        continue
                    try:
                        ip = ipaddress.ip_address(host.split("%", 1)[0])
                    except ValueError:
                        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                        ip = ipaddress.ip_address(str(infos[0][4][0]))
                        host = str(ip)
                    if ip.version == 6:
                        v6only = True if (ip.is_unspecified and port in v4_any_ports) else None
                        if ip.is_unspecified and v6only is None:
                            v6only = False
                        socks.append(_tcp_socket(socket.AF_INET6, host, port, reuse_port, v6only))
                    else:
                        socks.append(_tcp_socket(socket.AF_INET, host, port, reuse_port, None))
                except OSError as exc:
                    raise ListenError(
                        exc.errno or 0,
                        f"listening on {_fmt(addr.host, port)}: {exc.strerror or exc}",
                    ) from exc
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks
