"""Control messages between the supervisor and its workers, and the listening sockets a worker
shares with the supervisor.

A message is a JSON object framed as a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON. Framing by length (not by newline) keeps a multi-megabyte config one frame without
scanning it, and makes a torn stream detectable. `Channel` adds request/response correlation
on top: every request carries an `id`, the answer echoes it, so the supervisor can have a
metrics scrape in flight while a reload is being prepared.

Listener sharing: a worker binds its listening sockets itself (a bind error belongs to the
reload that asked for the address) and sends the supervisor a copy of each one (SCM_RIGHTS over
a SOCK_SEQPACKET socketpair, one JSON object per message) when it starts serving it, and word
when it stops. The supervisor keeps its copies open, so when a worker dies the kernel keeps its
sockets listening and queueing connections (in SO_REUSEPORT groups too), and hands them to the
replacement (proxy.supervisor). nginx gets the same by opening the sockets in its master.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

HEADER = struct.Struct(">I")
# A config of 1,000 sites is a few MB; anything near this is a bug or a torn stream.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
# asyncio's StreamReader buffer limit: larger than any single read we ask for.
STREAM_LIMIT_BYTES = 1 << 20


class ControlError(Exception):
    """The other side answered a request with an error, or the channel broke."""


class ChannelClosed(ControlError):
    pass


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"control message too large: {len(body)} bytes")
    return HEADER.pack(len(body)) + body


class Decoder:
    """Incremental decoder: feed bytes, get whole messages (pure; used by `read_message` and
    unit tests)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_MESSAGE_BYTES:
                raise ValueError(f"control message too large: {size} bytes")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            msg = json.loads(bytes(self._buf[HEADER.size : end]))
            del self._buf[:end]
            if not isinstance(msg, dict):
                raise ValueError("control message is not a JSON object")
            out.append(msg)
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ChannelClosed("control stream ended inside a frame header") from None
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_MESSAGE_BYTES:
        raise ControlError(f"control message too large: {size} bytes")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ChannelClosed("control stream ended inside a message") from None
    msg = json.loads(body)
    if not isinstance(msg, dict):
        raise ControlError("control message is not a JSON object")
    return msg


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Channel:
    """One end of a control connection. `request()` sends and awaits the answer with the same
    id; incoming requests (messages with `op`) go to `handler`, each in its own task, and its
    result (or exception text) is sent back as `{"id", "ok", ...}`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._write_lock = asyncio.Lock()
        self.closed = asyncio.Event()

    @classmethod
    async def open(cls, sock: Any, handler: Handler | None = None) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT_BYTES)
        return cls(reader, writer, handler)

    async def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        async with self._write_lock:
            self.writer.write(data)
            await self.writer.drain()

    async def request(
        self, op: str, timeout_s: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Send `op` and return the answer; raise ControlError with the remote error text."""
        if self.closed.is_set():
            raise ChannelClosed("control channel is closed")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await self.send({"op": op, "id": rid, **fields})
            answer = await asyncio.wait_for(fut, timeout_s)
        finally:
            self._waiting.pop(rid, None)
        if not answer.get("ok"):
            raise ControlError(str(answer.get("error") or "unknown error"))
        return answer

    async def serve(self) -> None:
        """Read until the other side closes; fail every waiting request then."""
        try:
            while True:
                msg = await read_message(self.reader)
                if msg is None:
                    break
                if "op" in msg:
                    task = asyncio.ensure_future(self._answer(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    continue
                fut = self._waiting.get(int(msg.get("id", 0)))
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ControlError, ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ChannelClosed("control channel closed"))

    async def _answer(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        try:
            if self.handler is None:
                raise ControlError(f"unexpected request {msg.get('op')!r}")
            result = await self.handler(msg)
            answer = {"id": rid, "ok": True, **result}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answer = {"id": rid, "ok": False, "error": str(exc) or type(exc).__name__}
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.send(answer)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


# --- listening sockets shared with the supervisor ----------------------------------------------

# The fields of a config.model.NetworkAddress: network, host, first port, last port.
AddressKey = tuple[str, str, int, int]
# Linux accepts at most SCM_MAX_FD (253) descriptors per message; a port range can have more
# sockets than that, so they go in parts.
MAX_FDS_PER_MESSAGE = 200
SHARE_MESSAGE_BYTES = 64 * 1024


def listener_share_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end). SEQPACKET keeps each message and its descriptors whole."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _share_message(op: str, key: AddressKey, part: int = 0) -> bytes:
    return json.dumps({"op": op, "address": list(key), "part": part}).encode("utf-8")


def share_listeners(
    sock: socket.socket, key: AddressKey, listeners: Sequence[socket.socket]
) -> None:
    """Worker side: send the supervisor copies of the sockets now listening for `key`."""
    fds = [s.fileno() for s in listeners]
    for part, start in enumerate(range(0, max(len(fds), 1), MAX_FDS_PER_MESSAGE)):
        socket.send_fds(
            sock, [_share_message("keep", key, part)], fds[start : start + MAX_FDS_PER_MESSAGE]
        )


def withdraw_listeners(sock: socket.socket, key: AddressKey) -> None:
    """Worker side: the sockets of `key` are no longer served; the supervisor closes its copies."""
    sock.send(_share_message("drop", key))


def _address_key(value: Any) -> AddressKey:
    if (
        isinstance(value, list)
        and len(value) == 4
        and isinstance(value[0], str)
        and isinstance(value[1], str)
        and isinstance(value[2], int)
        and isinstance(value[3], int)
    ):
        return (value[0], value[1], value[2], value[3])
    raise ControlError(f"listener message: bad address {value!r}")


class ListenerCopies:
    """Supervisor side: the supervisor's copies of the listening sockets of one worker slot,
    by address, kept open across the death of the worker that bound them."""

    def __init__(self) -> None:
        self.by_address: dict[AddressKey, list[socket.socket]] = {}

    def receive(self, sock: socket.socket) -> bool:
        """Apply every message waiting on the (non-blocking) `sock`; False once the worker end
        is closed and nothing is left to read. Raises ControlError on a malformed message
        (its descriptors are closed, the others stay applied)."""
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(
                    sock, SHARE_MESSAGE_BYTES, MAX_FDS_PER_MESSAGE
                )
            except (BlockingIOError, InterruptedError):
                return True
            except ConnectionError:
                return False
            received = [socket.socket(fileno=fd) for fd in fds]
            if not data and not received:
                return False
            try:
                self._apply(data, received, flags)
            except BaseException:
                for s in received:
                    s.close()
                raise

    def _apply(self, data: bytes, received: list[socket.socket], flags: int) -> None:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            # MSG_CTRUNC: the kernel dropped descriptors, e.g. the supervisor is out of them.
            raise ControlError("listener message truncated (out of file descriptors?)")
        try:
            msg = json.loads(data)
        except ValueError as exc:
            raise ControlError(f"listener message is not JSON: {exc}") from None
        if not isinstance(msg, dict):
            raise ControlError("listener message is not a JSON object")
        key = _address_key(msg.get("address"))
        op, part = msg.get("op"), msg.get("part", 0)
        if op == "keep" and isinstance(part, int):
            if part == 0:
                self._close(key)
                self.by_address[key] = received
            else:
                self.by_address.setdefault(key, []).extend(received)
        elif op == "drop" and not received:
            self._close(key)
        else:
            raise ControlError(f"listener message: unexpected {msg!r}")

    def _close(self, key: AddressKey) -> None:
        for s in self.by_address.pop(key, ()):
            s.close()

    def fds(self) -> list[int]:
        """The descriptors, in the order of `spec()`."""
        return [s.fileno() for _, socks in sorted(self.by_address.items()) for s in socks]

    def spec(self) -> list[list[Any]]:
        """JSON for the replacement worker: `[network, host, first, last, count]` each; the
        descriptors follow in `fds()` order."""
        return [[*key, len(socks)] for key, socks in sorted(self.by_address.items())]

    def close(self) -> None:
        for key in list(self.by_address):
            self._close(key)


def parse_listener_spec(
    spec: Any, fds: Sequence[int]
) -> Iterator[tuple[AddressKey, list[socket.socket]]]:
    """Worker side of `ListenerCopies.spec`: the inherited sockets by address, made from `fds`
    (this process's descriptors, in `ListenerCopies.fds` order)."""
    if not isinstance(spec, list):
        raise ControlError(f"listener spec is not a list: {spec!r}")
    rest = list(fds)
    for item in spec:
        if not isinstance(item, list) or len(item) != 5 or not isinstance(item[4], int):
            raise ControlError(f"listener spec: bad entry {item!r}")
        count = item[4]
        if count < 0 or count > len(rest):
            raise ControlError(
                f"listener spec: {count} descriptors for {item[:4]!r}, {len(rest)} left"
            )
        mine, rest = rest[:count], rest[count:]
        yield _address_key(item[:4]), [socket.socket(fileno=fd) for fd in mine]
    if rest:
        raise ControlError(f"listener spec: {len(rest)} descriptors left over")
