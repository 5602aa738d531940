"""The fork server: forks replacement workers from a process that never ran an event loop.

The supervisor's event loop is running when a worker dies, and forking a process with a running
loop copies its selector, its signal wakeup descriptor, locks other threads may hold and every
open descriptor (admin sockets, the other workers' channels and listening sockets) into the
child. A new interpreter is clean but pays the imports again: over a second of a busy machine
before the replacement serves. So, like the "forkserver" start method of Python's
multiprocessing, the supervisor forks this small server first, before its loop starts and
before any worker or admin socket exists; the server sleeps on its socket and forks each
replacement from that clean state, which is the state the startup workers were forked from.

Parentage: the server double-forks (server, then a short-lived intermediate, then the worker)
and the supervisor is a child subreaper (PR_SET_CHILD_SUBREAPER, Linux 3.4+), so when the
intermediate exits the worker is re-parented to the supervisor, which waits for it like for
the startup workers. Where the supervisor cannot be a subreaper there is no fork server and a
replacement is a new interpreter (proxy.supervisor.spawn_worker).

Protocol, over a SOCK_SEQPACKET socketpair: a request is the worker's spec (JSON, see
proxy.worker.run_spawned_worker) with its descriptors (SCM_RIGHTS); the answer is `{"pid": N}`
or `{"error": TEXT}`. The server exits at end of file: when the supervisor closes its end or
dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from proxy.control import MAX_FDS_PER_MESSAGE

log = logging.getLogger("pyproxy")

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
MESSAGE_BYTES = 64 * 1024
# A fork takes milliseconds; the server not answering in this time is broken.
ANSWER_TIMEOUT_S = 10.0
# The worker's spec carries all its listening sockets; past SCM_RIGHTS' limit per message the
# supervisor starts a new interpreter instead (proxy.supervisor).
MAX_FDS = MAX_FDS_PER_MESSAGE

RunWorker = Callable[[dict[str, Any], list[int]], int]


def _prctl(option: int, arg: int | bytes) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def set_process_name(name: str) -> None:
    """The name `ps -o comm`, `top` and /proc/PID/comm show (at most 15 bytes on Linux)."""
    _prctl(PR_SET_NAME, name.encode()[:15])


class ForkServerGone(OSError):
    """The fork server exited (killed, out of memory): replacements take another way."""


class ForkServer:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self._lock = asyncio.Lock()

    @classmethod
    def start(cls, run_worker: RunWorker) -> ForkServer | None:
        """Fork the server; call before the event loop starts and before opening anything a
        worker must not inherit. None where the supervisor cannot adopt the workers it forks
        (no PR_SET_CHILD_SUBREAPER)."""
        if not _prctl(PR_SET_CHILD_SUBREAPER, 1):
            return None
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            code = 0
            try:
                _serve(child_sock, run_worker)
            except BaseException:
                log.exception("fork server %d failed", os.getpid())
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child_sock.close()
        parent_sock.setblocking(False)
        return cls(pid, parent_sock)

    async def spawn(self, spec: dict[str, Any], fds: list[int]) -> int:
        """Fork a worker running `run_worker(spec, its copies of fds)`; its pid."""
        loop = asyncio.get_running_loop()
        async with self._lock:  # one request at a time: answers come in request order
            if not self.open:
                raise ForkServerGone("the fork server is closed")
            try:
                socket.send_fds(self.sock, [json.dumps(spec).encode("utf-8")], fds)
                data = await asyncio.wait_for(
                    loop.sock_recv(self.sock, MESSAGE_BYTES), ANSWER_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                self.close()
                raise ForkServerGone(f"the fork server is gone: {exc}") from None
        if not data:
            self.close()
            raise ForkServerGone("the fork server exited")
        answer = json.loads(data)
        if isinstance(answer, dict) and isinstance(answer.get("pid"), int):
            return int(answer["pid"])
        raise OSError(f"fork server: {answer.get('error') if isinstance(answer, dict) else answer}")

    @property
    def open(self) -> bool:
        return self.sock.fileno() >= 0

    def close(self) -> None:
        """End the server (it exits at end of file); the supervisor reaps it by `pid`."""
        with contextlib.suppress(OSError):
            self.sock.close()


def _serve(sock: socket.socket, run_worker: RunWorker) -> None:
    # Signals are the supervisor's business, as in a worker; the server ends with its socket.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    set_process_name("pyproxy forksrv")
    while True:
        data, fds, _flags, _ = socket.recv_fds(sock, MESSAGE_BYTES, MAX_FDS + 2)
        if not data and not fds:
            return
        try:
            spec = json.loads(data)
            if not isinstance(spec, dict):
                raise ValueError("spec is not a JSON object")
            answer: dict[str, Any] = {"pid": _double_fork(sock, run_worker, spec, fds)}
        except (ValueError, OSError) as exc:
            answer = {"error": str(exc) or type(exc).__name__}
        finally:
            for fd in fds:  # the worker has its own copies
                os.close(fd)
        sock.send(json.dumps(answer).encode("utf-8"))


def _double_fork(
    sock: socket.socket, run_worker: RunWorker, spec: dict[str, Any], fds: list[int]
) -> int:
    """Fork an intermediate that forks the worker, says its pid and exits, so the worker is
    re-parented to the nearest subreaper, the supervisor."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            worker = os.fork()
            if worker == 0:
                os.close(write_end)
                sock.close()
                code = 1
                try:
                    code = run_worker(spec, fds)
                except BaseException:
                    log.exception("worker %d failed", os.getpid())
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            os.write(write_end, str(worker).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 64):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(middle, 0)
    if not chunks:
        raise OSError("fork failed")
    return int(b"".join(chunks))
