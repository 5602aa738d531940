"""Test helper: a throwaway `redis-server` (Debian's package) on a free loopback port.

No persistence (`--save "" --appendonly no`), its working directory in the test's tmp dir; it is
stopped by pid. `restart()` brings it back on the same port (an empty database, like a Redis
that lost its data), for outage tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from acme_client.redis_storage import RedisStorage, RedisStorageConfig

REDIS_SERVER_BIN = shutil.which("redis-server")
STARTUP_TIMEOUT_S = 10.0

requires_redis = pytest.mark.skipif(
    REDIS_SERVER_BIN is None, reason="redis-server not installed (apt-get install redis-server)"
)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    host: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER_BIN is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER_BIN,
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1.0)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited: {(self.workdir / 'redis.log').read_text()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer PING in time")
                time.sleep(0.05)  # polling the port until it answers, bounded by the deadline
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def config(self, *, key_prefix: str = "caddy", timeout_s: int = 0) -> RedisStorageConfig:
        return RedisStorageConfig(
            host=self.host, port=self.port, key_prefix=key_prefix, timeout_s=timeout_s
        )

    def storage(self, *, key_prefix: str = "caddy", timeout_s: int = 0) -> RedisStorage:
        return RedisStorage.from_config(self.config(key_prefix=key_prefix, timeout_s=timeout_s))

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5.0)


@contextmanager
def running_redis(workdir: Path, host: str = "127.0.0.1") -> Iterator[RedisServer]:
    server = RedisServer(host=host, port=_free_port(host), workdir=workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
