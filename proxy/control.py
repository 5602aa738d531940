"""Control messages between the supervisor and its workers.

A message is a JSON object framed as a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON. Framing by length (not by newline) keeps a multi-megabyte config one frame without
scanning it, and makes a torn stream detectable. `Channel` adds request/response correlation
on top: every request carries an `id`, the answer echoes it, so the supervisor can have a
metrics scrape in flight while a reload is being prepared.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
from collections.abc import Awaitable, Callable
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
