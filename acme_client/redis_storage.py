"""Certificate storage and locks in Redis, shared with Caddy's `caddy-storage-redis` module.

Several nodes (pyproxy, or Caddy built with github.com/pberkel/caddy-storage-redis) pointed at
one Redis server share certificates, ACME accounts, challenge tokens and locks. The layout is
that module's (storage.go), so both read what either wrote:

- a value is a Redis string at `<key_prefix>/<key>` (Go's path.Join) holding the JSON
  `{"value": <base64>, "modified": <RFC 3339>, "size": <bytes>, "compression": 0|1|2,
  "encryption": 0|1}`; `value` is the (optionally compressed, then encrypted) content,
  `size` the length before compression;
- every "directory" is a sorted set at its prefixed path whose members are the names of its
  children, directories with a trailing `/` (score: the child's creation time, Unix seconds);
  the top-level set is `<key_prefix>` itself. `list` reads these sets instead of scanning keys;
- compression 1 is raw DEFLATE, 2 is zlib (decompressed values are limited to 4 MiB);
  encryption 1 is AES-256-GCM with the first 32 bytes of `encryption_key`, the 12-byte nonce
  prepended to the sealed value;
- a lock is the string `<key_prefix>/locks/<name>` set with NX and an expiry (redislock, the
  module's lock library); only the holder's own random value lets it refresh or delete it.

Where this implementation differs from the module, it is deliberate and small: locks expire
after 10 s and are refreshed every 5 s (certmagic's file-lock timings; the module uses 5 s / 3 s,
which changes nothing for mutual exclusion since both sides test the same key with SET NX);
`delete` of a directory removes everything below it and `list` reports directories too and sorts
by name (certmagic's FileStorage semantics, which pyproxy's callers rely on; the module deletes
one key and lists only leaves when recursive).

The client is redis-py's asyncio one (pyproxy issue #17: no hand-written protocol), run on one
private event loop per process, in a daemon thread started on first use (and again in a forked
child: the supervisor forks workers, and a child must neither use the parent's sockets nor
wait on a loop thread that fork did not copy). Why a loop of its own: the Storage interface is
synchronous, like certmagic's, and its callers (the ACME manager and issuer, proxy.certs) already
run it in executor threads so that their event loop never waits on storage; each synchronous
method submits one coroutine to the storage loop and blocks its executor thread until it is
done. Lock refreshes are tasks on that loop, not a thread per lock. Nothing but this module's
coroutines runs on the loop, and a storage method called from it would wait for itself, so
that is refused (RuntimeError).

Every call is bounded: each socket operation by the configured timeout (go-redis's defaults
without one) and the whole call by `call_timeout_s`. A server that cannot be reached, or does
not answer in time, raises StorageUnavailableError, an OSError, so callers log it and retry
later while certificates already in memory keep serving. `close()` is final: calls in flight
and every later call raise StorageUnavailableError, and no connection is opened again.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import threading
import weakref
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
import redis.asyncio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from acme_client.locks import (
    LOCK_FRESHNESS_INTERVAL_S,
    LOCK_POLL_INTERVAL_S,
    LOCK_STALE_AFTER_S,
    LockError,
    LockMeta,
    LockOwner,
    LockTimeout,
    format_go_time,
    parse_go_time,
    wait_for_lock,
)
from acme_client.storage import (
    PREFIX_LOCKS,
    KeyInfo,
    StorageError,
    StorageUnavailableError,
    store_all_or_none,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# caddy-storage-redis defaults (storage.go).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = "6379"
DEFAULT_KEY_PREFIX = "caddy"
# go-redis defaults when `timeout` is unset (or 0): dial 5 s, read/write 3 s.
DEFAULT_DIAL_TIMEOUT_S = 5.0
DEFAULT_IO_TIMEOUT_S = 3.0

COMPRESSION_NONE = 0
COMPRESSION_FLATE = 1
COMPRESSION_ZLIB = 2
# compression.go: maxDecompressedBytes guards against decompression bombs.
MAX_DECOMPRESSED_BYTES = 4 << 20
ENCRYPTION_KEY_BYTES = 32
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16

# The JSON fields of the module's config (RedisStorage struct tags), all but `module`.
CONFIG_FIELDS = (
    "client_type",
    "address",
    "host",
    "port",
    "db",
    "timeout",
    "username",
    "password",
    "sentinel_password",
    "master_name",
    "key_prefix",
    "encryption_key",
    "compression",
    "tls_enabled",
    "tls_insecure",
    "tls_server_certs_pem",
    "tls_server_certs_path",
    "route_by_latency",
    "route_randomly",
)

# Compare-and-refresh / compare-and-delete: only the holder's value may touch its lock
# (redislock's refresh and release scripts do the same).
_REFRESH_SCRIPT = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""


class RedisConfigError(ValueError):
    """A `storage` config the Redis backend cannot honour; the message starts with the JSON path."""


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisStorageConfig:
    """The resolved `{"module": "redis", ...}` storage config (one standalone server)."""

    host: str = DEFAULT_HOST
    port: int = int(DEFAULT_PORT)
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    key_prefix: str = DEFAULT_KEY_PREFIX
    # 0: go-redis defaults (dial 5 s, read/write 3 s); else every socket operation, in seconds.
    timeout_s: int = 0
    encryption_key: bytes = field(default=b"", repr=False)
    compression: int = COMPRESSION_NONE
    tls_enabled: bool = False
    tls_insecure: bool = False
    tls_server_certs_pem: str = ""
    tls_server_certs_path: str = ""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def describe(self) -> str:
        """Which storage this is (no secrets): two configs with one description share data."""
        scheme = "rediss" if self.tls_enabled else "redis"
        return f"{scheme}://{self.address}/{self.db}/{self.key_prefix}"


def _go_path_clean(path: str) -> str:
    """Go's path.Clean for the relative paths used here ('.' for empty)."""
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def go_path_join(*parts: str) -> str:
    """Go's path.Join: non-empty parts joined by '/', then cleaned ('' when all are empty)."""
    kept = [p for p in parts if p]
    if not kept:
        return ""
    return _go_path_clean("/".join(kept))


def _go_path_dir(path: str) -> str:
    head, sep, _tail = path.rpartition("/")
    return _go_path_clean(head if sep else "")


def _go_path_base(path: str) -> str:
    path = path.rstrip("/")
    if not path:
        return "/"
    return path.rpartition("/")[2]


def normalize_key_prefix(prefix: str, where: str) -> str:
    """caddyfile.go normalizeKeyPrefix: trim spaces and slashes; no empty, '.' or '..' segment."""
    p = prefix.strip().strip("/")
    if p:
        for segment in p.split("/"):
            if segment in ("", ".", ".."):
                raise RedisConfigError(f"{where}: invalid key_prefix segment: {segment!r}")
    return p


def _parse_bool_field(doc: Mapping[str, Any], name: str, where: str) -> bool:
    value = doc.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RedisConfigError(f"{where}.{name}: expected true or false")
    return value


def _parse_str_field(doc: Mapping[str, Any], name: str, where: str, default: str = "") -> str:
    value = doc.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise RedisConfigError(f"{where}.{name}: expected a string")
    return value


def _parse_str_list(doc: Mapping[str, Any], name: str, where: str) -> list[str] | None:
    value = doc.get(name)
    if value is None:
        return None
    # The module's fields are []string; a bare string was the old gamalan/caddy-tlsredis form.
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RedisConfigError(f"{where}.{name}: expected an array of strings")
    return list(value)


def _split_host_port(text: str, where: str) -> tuple[str, str]:
    # Go's net.SplitHostPort: "host:port" or "[v6]:port".
    if text.startswith("["):
        end = text.find("]")
        if end == -1 or not text[end + 1 :].startswith(":"):
            raise RedisConfigError(f"{where}: invalid address: {text}")
        return text[1:end], text[end + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        raise RedisConfigError(f"{where}: invalid address: {text}")
    return host, port


def _go_atoi(text: str) -> int | None:
    """Go's strconv.Atoi: optional sign, ASCII digits, nothing else (Python's int() also takes
    spaces and underscores)."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    return int(text)


def _parse_port(text: str, where: str) -> int:
    port = _go_atoi(text)
    if port is None or not 0 < port < 65536:
        raise RedisConfigError(f"{where}: invalid port value: {text}")
    return port


def parse_redis_storage_config(
    doc: Mapping[str, Any],
    where: str = "storage",
    replace: Callable[[str], str] = lambda text: text,
) -> RedisStorageConfig:
    """Resolve the module's JSON config like its finalizeConfiguration, or refuse it by name.

    `replace` evaluates global placeholders (`{env.X}`); the module runs Caddy's replacer over
    its string fields the same way. Cluster and Sentinel (failover) modes are refused: pyproxy
    talks to one standalone server.
    """
    for name in doc:
        if name != "module" and name not in CONFIG_FIELDS:
            # Caddy decodes module configs strictly: an unknown field is an error.
            raise RedisConfigError(f"{where}.{name}: unknown field")
    client_type = _parse_str_field(doc, "client_type", where, "simple")
    if client_type not in ("", "simple"):
        raise RedisConfigError(
            f"{where}.client_type: {client_type!r} is not supported by pyproxy (only simple, one "
            "standalone Redis server)"
        )
    for name in ("route_by_latency", "route_randomly"):
        if _parse_bool_field(doc, name, where):
            raise RedisConfigError(
                f"{where}.{name}: cluster routing is not supported by pyproxy (one standalone "
                "Redis server)"
            )
    for name in ("master_name", "sentinel_password"):
        if _parse_str_field(doc, name, where):
            raise RedisConfigError(
                f"{where}.{name}: Sentinel (failover) mode is not supported by pyproxy"
            )

    addresses = [replace(a) for a in _parse_str_list(doc, "address", where) or []]
    if addresses:
        pairs = [_split_host_port(a, f"{where}.address[{i}]") for i, a in enumerate(addresses)]
    else:
        hosts = _parse_str_list(doc, "host", where)
        ports = _parse_str_list(doc, "port", where)
        hosts = [replace(h) or DEFAULT_HOST for h in hosts] if hosts is not None else [DEFAULT_HOST]
        ports = [replace(p) or DEFAULT_PORT for p in ports] if ports is not None else [DEFAULT_PORT]
        # The module pairs host[i] with port[i], repeating the last of the shorter list.
        count = max(len(hosts), len(ports))
        pairs = [
            (hosts[min(i, len(hosts) - 1)], ports[min(i, len(ports) - 1)]) for i in range(count)
        ]
    if len(pairs) != 1:
        # The module switches to its cluster client for more than one address.
        raise RedisConfigError(
            f"{where}.address: {len(pairs)} addresses make a Redis cluster, which pyproxy does "
            "not support (give one standalone server)"
        )
    host, port_text = pairs[0]
    port = _parse_port(port_text, f"{where}.port")
    if not host:
        raise RedisConfigError(f"{where}.host: empty host")

    db_value = doc.get("db", 0)
    if isinstance(db_value, bool) or not isinstance(db_value, int | str | None):
        raise RedisConfigError(f"{where}.db: expected a number or a string")
    db_text = "0" if db_value is None else replace(str(db_value))
    db = _go_atoi(db_text)
    if db is None or db < 0:
        raise RedisConfigError(f"{where}.db: invalid db value: {db_text}")

    timeout_text = replace(_parse_str_field(doc, "timeout", where))
    timeout_s = 0
    if timeout_text:
        parsed = _go_atoi(timeout_text)
        if parsed is None or parsed < 0:
            raise RedisConfigError(f"{where}.timeout: invalid timeout value: {timeout_text}")
        timeout_s = parsed

    # Absent: the module's default; an explicit "" is an empty prefix (keys at the top level).
    key_prefix = normalize_key_prefix(
        replace(_parse_str_field(doc, "key_prefix", where, DEFAULT_KEY_PREFIX)),
        f"{where}.key_prefix",
    )

    encryption_text = replace(_parse_str_field(doc, "encryption_key", where))
    encryption_key = encryption_text.encode("utf-8")
    if encryption_key:
        if len(encryption_key) < ENCRYPTION_KEY_BYTES:
            raise RedisConfigError(
                f"{where}.encryption_key: invalid length, must contain at least 32 bytes"
            )
        encryption_key = encryption_key[:ENCRYPTION_KEY_BYTES]  # the module truncates longer keys

    compression_value = doc.get("compression", "")
    if isinstance(compression_value, bool):  # the legacy boolean form: true is flate
        compression_text = "flate" if compression_value else ""
    elif isinstance(compression_value, str) or compression_value is None:
        compression_text = replace(compression_value or "")
    else:
        raise RedisConfigError(f"{where}.compression: expected a string or a boolean")
    compressions = {"": COMPRESSION_NONE, "false": COMPRESSION_NONE, "flate": COMPRESSION_FLATE}
    compressions |= {"true": COMPRESSION_FLATE, "zlib": COMPRESSION_ZLIB}
    if compression_text not in compressions:
        raise RedisConfigError(
            f"{where}.compression: invalid compression value: {compression_text!r} "
            "(expected 'flate', 'zlib', or 'false')"
        )

    tls_enabled = _parse_bool_field(doc, "tls_enabled", where)
    tls_insecure = _parse_bool_field(doc, "tls_insecure", where)
    certs_pem = replace(_parse_str_field(doc, "tls_server_certs_pem", where))
    certs_path = replace(_parse_str_field(doc, "tls_server_certs_path", where))
    if certs_pem and certs_path:
        raise RedisConfigError(
            f"{where}.tls_server_certs_path: cannot be given alongside tls_server_certs_pem"
        )
    if certs_pem and "-----BEGIN CERTIFICATE-----" not in certs_pem:
        raise RedisConfigError(f"{where}.tls_server_certs_pem: no PEM certificate found")

    return RedisStorageConfig(
        host=host,
        port=port,
        db=db,
        username=replace(_parse_str_field(doc, "username", where)),
        password=replace(_parse_str_field(doc, "password", where)),
        key_prefix=key_prefix,
        timeout_s=timeout_s,
        encryption_key=encryption_key,
        compression=compressions[compression_text],
        tls_enabled=tls_enabled,
        tls_insecure=tls_insecure,
        tls_server_certs_pem=certs_pem,
        tls_server_certs_path=certs_path,
    )


def redis_client(config: RedisStorageConfig) -> redis.asyncio.Redis:
    """An asyncio client whose every socket operation is bounded by the configured timeout.

    It connects lazily, on the event loop of its first command: create and use it on the
    storage loop only (`RedisStorage` does)."""
    dial_s, io_s = _socket_timeouts(config)
    kwargs: dict[str, Any] = {}
    if config.tls_enabled:
        kwargs["ssl"] = True
        if config.tls_insecure:
            kwargs["ssl_cert_reqs"] = "none"
            kwargs["ssl_check_hostname"] = False
        if config.tls_server_certs_pem:
            kwargs["ssl_ca_data"] = config.tls_server_certs_pem
        if config.tls_server_certs_path:
            kwargs["ssl_ca_certs"] = config.tls_server_certs_path
    return redis.asyncio.Redis(
        host=config.host,
        port=config.port,
        db=config.db,
        username=config.username or None,
        password=config.password or None,
        socket_connect_timeout=dial_s,
        socket_timeout=io_s,
        # One retry, no backoff: a pooled connection the server dropped (a restart) fails once
        # and the retry reconnects; a server that is down answers "refused" at once, and the
        # caller (renewal loop, storage poll) retries on its own schedule.
        retry=AsyncRetry(NoBackoff(), 1),
        **kwargs,
    )


def _socket_timeouts(config: RedisStorageConfig) -> tuple[float, float]:
    """(dial, read/write) seconds: the configured `timeout` for both, else go-redis's defaults."""
    if config.timeout_s:
        return float(config.timeout_s), float(config.timeout_s)
    return DEFAULT_DIAL_TIMEOUT_S, DEFAULT_IO_TIMEOUT_S


def call_timeout_s(config: RedisStorageConfig) -> float:
    """How long one storage call may take in all: a dial and a command, twice (the client's one
    retry). A call that takes several commands (a `store` updating the directory index, a
    recursive `list`) shares that budget; past it the call fails rather than hangs."""
    dial_s, io_s = _socket_timeouts(config)
    return 2 * (dial_s + io_s)


# --- the storage loop --------------------------------------------------------------------------


class _StorageLoop:
    """The process's private event loop, in a daemon thread, that runs every Redis command.

    Only coroutines of this module run on it, and they never call a synchronous storage method:
    that would wait on the loop from the loop itself, a deadlock, so `run` refuses it.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        # The stdlib's selector loop whatever the policy (workers may install uvloop's): what
        # fork does to it is known (see _disown_inherited_connections), and it only waits on
        # Redis.
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()
        self.thread = threading.Thread(target=self._serve, name="redis-storage-loop", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        """Run `coro` on the loop and wait for its result in the calling thread.

        `timeout_s` is a backstop: the coroutines bound themselves (`asyncio.timeout`) a little
        sooner, so this only fires if the loop itself is stuck.
        """
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a RedisStorage method was called on the Redis storage loop itself; it would "
                "wait for itself forever (call storage from executor threads only)"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the Redis storage loop did not answer within {timeout_s:g} s")


_storage_loop_mu = threading.Lock()
_storage_loop_instance: _StorageLoop | None = None


def _storage_loop(create: bool = True) -> _StorageLoop | None:
    """This process's storage loop, started on first use (None when absent and not `create`)."""
    global _storage_loop_instance
    with _storage_loop_mu:
        current = _storage_loop_instance
        # A forked child has no loop thread (fork copies only the forking thread), whatever
        # the copied object says: it needs a loop of its own.
        if current is not None and current.pid != os.getpid():
            current = _storage_loop_instance = None
        if current is None and create:
            current = _storage_loop_instance = _StorageLoop()
        return current


# Every storage of this process, so that a forked child can let go of their clients at once.
_live_storages: weakref.WeakSet[RedisStorage] = weakref.WeakSet()


def _forget_storage_loop_in_child() -> None:
    # The parent's loop thread does not exist in the child, and another of its threads may have
    # held the lock at the moment of the fork: start over with both. The storages' clients are
    # the parent's: dropped now, before anything in the child (a collection on the child's own
    # event loop) could close them the asyncio way.
    global _storage_loop_instance, _storage_loop_mu
    _storage_loop_instance = None
    _storage_loop_mu = threading.Lock()
    for storage in list(_live_storages):
        storage._forget_parent_client()


os.register_at_fork(after_in_child=_forget_storage_loop_in_child)


def _disown_inherited_connections(client: redis.asyncio.Redis) -> None:
    """In a forked child: let go of the parent's connections without touching them.

    A copied socket is the parent's connection (one TCP stream, two processes), and its copied
    transport is registered in the epoll instance of the parent's storage loop, which fork
    shares with the child: closing it the asyncio way (redis-py does when it collects an
    unclosed connection) would unregister the parent's socket from the parent's loop, whose
    next command then times out. So each inherited socket descriptor is replaced by /dev/null
    (dup2): the child's reference to the stream goes at once, the parent's stays, and whatever
    later finalizes the old objects acts on /dev/null. The pool's connection lists are
    redis-py internals, read defensively.
    """
    pool = client.connection_pool
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for connection in connections:
            writer = getattr(connection, "_writer", None)
            sock = writer.get_extra_info("socket") if writer is not None else None
            fd = sock.fileno() if sock is not None else -1
            if fd >= 0:
                os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


# --- the storage -------------------------------------------------------------------------------


def close_storage(storage: object) -> None:
    """Close what a storage holds open: a RedisStorage's connections (FileStorage holds none).

    Whoever opened a storage (`CertSetup.open_storage()`) closes it when its config generation
    is replaced, so reloads do not accumulate Redis connections.
    """
    if isinstance(storage, RedisStorage):
        storage.close()


def _is_wrong_type(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("WRONGTYPE")


class RedisStorage:
    """certmagic's Storage in Redis with caddy-storage-redis's layout (see the module docstring).

    `load`, `stat` and `list` raise FileNotFoundError for a missing key and IsADirectoryError for
    `load` of a directory, like FileStorage; a Redis failure, a call that outlives its timeout
    (`call_timeout_s`) and any call after `close()` are StorageUnavailableError.

    The methods are synchronous and block their calling thread (an executor thread): each runs
    its commands as one coroutine on the process's storage loop. The client lives on that loop
    and is created there on first use, and again in a forked child (which must not write to
    the parent's sockets).
    """

    def __init__(
        self,
        config: RedisStorageConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if config.encryption_key and len(config.encryption_key) != ENCRYPTION_KEY_BYTES:
            raise ValueError("encryption_key must be 32 bytes")
        self.config = config
        self.key_prefix = config.key_prefix
        self.compression = config.compression
        self.encryption_key = config.encryption_key
        self.description = config.describe()
        self.clock = clock
        self.call_timeout_s = call_timeout_s(config)
        self._closed = False
        # Touched on the storage loop only (no lock needed): the client of process
        # `_client_pid`, and the tasks using it, which `close` cancels.
        self._client: redis.asyncio.Redis | None = None
        self._client_pid = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        _live_storages.add(self)

    @classmethod
    def from_config(cls, config: RedisStorageConfig) -> RedisStorage:
        return cls(config)

    def __repr__(self) -> str:
        return f"RedisStorage:{self.description}"

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the connections for good; idempotent.

        Calls in flight fail (StorageUnavailableError) and so does every later call: a closed
        storage never reconnects, so a straggler (a stopped manager's ACME thread ending at its
        deadline) cannot open a connection the owner will never close. Lock refreshes stop;
        the locks expire on their own.
        """
        if self._closed:
            return
        self._closed = True
        storage_loop = _storage_loop(create=False)
        if storage_loop is None:
            return  # never used in this process: nothing is open
        try:
            storage_loop.run(self._close_on_loop(), self.call_timeout_s + 1.0)
        except TimeoutError as exc:
            # Closed all the same: refused from now on; the sockets go with the process.
            log.warning("%s: closing: %s", self.description, exc)

    async def _close_on_loop(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        # Let them finish (they end with StorageUnavailableError) before the pool goes away.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._forget_parent_client()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await client.aclose()

    def label(self, key: str) -> str:
        return f"{self.description}: {self.redis_key(key)}"

    def new_locker(self) -> RedisLocker:
        return RedisLocker(self)

    def redis_key(self, key: str) -> str:
        """The Redis key of a storage key: path.Join(key_prefix, key), as the module does."""
        if key.startswith("/") or any(part == ".." for part in key.split("/")):
            raise StorageError(f"{key}: invalid storage key")
        return go_path_join(self.key_prefix, key) or "."

    def _unavailable(self, key: str, exc: BaseException | str) -> StorageUnavailableError:
        return StorageUnavailableError(f"{key}: {self.description}: {exc}")

    # --- running commands on the storage loop --------------------------------------------------

    def _run(self, key: str, operation: Callable[[redis.asyncio.Redis], Awaitable[_T]]) -> _T:
        """Run `operation(client)` on the storage loop, blocking this thread until it is done."""
        if self._closed:
            raise self._unavailable(key, "storage is closed")
        storage_loop = _storage_loop()
        assert storage_loop is not None
        try:
            return storage_loop.run(self._guarded(key, operation), self.call_timeout_s + 1.0)
        except TimeoutError as exc:
            raise self._unavailable(key, exc) from exc

    async def _guarded(
        self, key: str, operation: Callable[[redis.asyncio.Redis], Awaitable[_T]]
    ) -> _T:
        """`operation` with this process's client, bounded by `call_timeout_s`, its Redis errors
        as StorageUnavailableError. Runs on the storage loop (also awaited by lock refreshes)."""
        if self._closed:
            raise self._unavailable(key, "storage is closed")
        task = asyncio.current_task()
        assert task is not None
        # A lock refresh awaits this inside its own, already registered, task.
        registered_here = task not in self._tasks
        self._tasks.add(task)
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await operation(self._client_here())
        except TimeoutError as exc:
            raise self._unavailable(
                key, f"no answer within {self.call_timeout_s:g} s ({exc or 'timed out'})"
            ) from exc
        except asyncio.CancelledError:
            if self._closed:
                raise self._unavailable(key, "storage was closed during the call") from None
            raise
        except redis.RedisError as exc:
            raise self._unavailable(key, exc) from exc
        finally:
            if registered_here:
                self._tasks.discard(task)

    def _client_here(self) -> redis.asyncio.Redis:
        pid = os.getpid()
        # The fork hook has dropped a parent's client already; this covers a fork it missed.
        self._forget_parent_client()
        if self._client is None:
            self._client = redis_client(self.config)
            self._client_pid = pid
        return self._client

    def _forget_parent_client(self) -> None:
        """In a forked child: the client (and the tasks using it) are the parent's, not ours."""
        if self._client is not None and self._client_pid != os.getpid():
            _disown_inherited_connections(self._client)
            self._client = None
            self._tasks = set()

    # --- values --------------------------------------------------------------------------------

    def _encode(self, value: bytes, modified: datetime) -> bytes:
        size = len(value)
        compression = COMPRESSION_NONE
        if self.compression != COMPRESSION_NONE:
            if self.compression == COMPRESSION_ZLIB:
                packed = zlib.compress(value)
            else:
                deflate = zlib.compressobj(wbits=-15)  # raw DEFLATE, Go's compress/flate
                packed = deflate.compress(value) + deflate.flush()
            if len(packed) < size:  # the module keeps the smaller form only
                value, compression = packed, self.compression
        encryption = 0
        if self.encryption_key:
            nonce = secrets.token_bytes(GCM_NONCE_BYTES)
            value = nonce + AESGCM(self.encryption_key).encrypt(nonce, value, None)
            encryption = 1
        # Go's json.Marshal of StorageData: []byte as standard base64, time.Time as RFC 3339.
        doc = {
            "value": base64.b64encode(value).decode("ascii"),
            "modified": format_go_time(modified),
            "size": size,
            "compression": compression,
            "encryption": encryption,
        }
        return json.dumps(doc, separators=(",", ":")).encode("ascii")

    def _decode_doc(self, key: str, raw: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise StorageError(f"{key}: unable to unmarshal value: {exc}") from exc
        if not isinstance(doc, dict):
            raise StorageError(f"{key}: unable to unmarshal value: not a JSON object")
        return doc

    def _decode_value(self, key: str, doc: Mapping[str, Any]) -> bytes:
        encoded = doc.get("value") or ""
        if not isinstance(encoded, str):
            raise StorageError(f"{key}: unable to unmarshal value: 'value' is not base64")
        try:
            value = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise StorageError(f"{key}: unable to unmarshal value: {exc}") from exc
        encryption = doc.get("encryption") or 0
        if encryption:
            if not self.encryption_key:
                raise StorageError(f"{key}: value is encrypted and no encryption_key is set")
            if len(value) < GCM_NONCE_BYTES + GCM_TAG_BYTES:
                raise StorageError(f"{key}: unable to decrypt value: invalid encrypted data")
            try:
                value = AESGCM(self.encryption_key).decrypt(
                    value[:GCM_NONCE_BYTES], value[GCM_NONCE_BYTES:], None
                )
            except Exception as exc:  # cryptography's InvalidTag carries no message
                raise StorageError(f"{key}: unable to decrypt value: decryption failure") from exc
        compression = doc.get("compression") or 0
        if compression:
            wbits = 15 if compression == COMPRESSION_ZLIB else -15
            inflate = zlib.decompressobj(wbits=wbits)
            try:
                out = inflate.decompress(value, MAX_DECOMPRESSED_BYTES + 1)
            except zlib.error as exc:
                raise StorageError(f"{key}: unable to decompress value: {exc}") from exc
            if len(out) > MAX_DECOMPRESSED_BYTES:
                raise StorageError(
                    f"{key}: unable to decompress value: exceeds {MAX_DECOMPRESSED_BYTES} bytes"
                )
            value = out
        return value

    async def _get(self, client: redis.asyncio.Redis, key: str) -> bytes:
        """The raw StorageData JSON of `key`."""
        rkey = self.redis_key(key)
        try:
            raw = await client.get(rkey)
        except redis.ResponseError as exc:
            if _is_wrong_type(exc):
                raise IsADirectoryError(f"{key}: is a directory") from exc
            raise StorageError(f"{key}: {exc}") from exc
        if raw is None:
            raise FileNotFoundError(f"{key}: not found in {self.description}")
        assert isinstance(raw, bytes)
        return raw

    # --- the directory index (sorted sets) ----------------------------------------------------

    async def _add_to_index(self, client: redis.asyncio.Redis, rkey: str, score: float) -> None:
        # storeDirectoryRecord: add the base name to its parent's set; walk up only while the
        # parent was new (an existing set already has its own record).
        path, is_dir = rkey, False
        while True:
            parent = _go_path_dir(path)
            if parent == ".":
                return
            member = _go_path_base(path) + ("/" if is_dir else "")
            if not await client.zadd(parent, {member: score}):
                return
            path, is_dir = parent, True

    async def _remove_from_index(
        self, client: redis.asyncio.Redis, rkey: str, is_dir: bool
    ) -> None:
        # deleteDirectoryRecord: remove from the parent set; Redis drops an emptied set, and
        # then the parent's own record goes too.
        path = rkey
        while True:
            parent = _go_path_dir(path)
            if parent == ".":
                return
            await client.zrem(parent, _go_path_base(path) + ("/" if is_dir else ""))
            if await client.exists(parent):
                return
            path, is_dir = parent, True

    async def _children(self, client: redis.asyncio.Redis, rkey: str) -> list[str]:
        try:
            members = await client.zrange(rkey, 0, -1)
        except redis.ResponseError as exc:
            if _is_wrong_type(exc):
                return []  # a value, not a directory: no children
            raise
        return [m.decode("utf-8", "surrogateescape") for m in members if isinstance(m, bytes)]

    # --- Storage -------------------------------------------------------------------------------

    def store(self, key: str, value: bytes) -> None:
        rkey = self.redis_key(key)
        modified = self.clock()
        data = self._encode(value, modified)  # in this thread: the loop only waits on Redis

        async def store_value(client: redis.asyncio.Redis) -> None:
            try:
                # Index first, then the value (the module's order): a crash in between leaves
                # an index entry without a value, which `list` callers already meet as "not
                # found".
                await self._add_to_index(client, rkey, float(int(modified.timestamp())))
                await client.set(rkey, data)
            except redis.ResponseError as exc:
                if _is_wrong_type(exc):  # a parent "directory" is a value (FileStorage: ENOTDIR)
                    raise NotADirectoryError(f"{key}: a parent is not a directory") from exc
                raise StorageError(f"{key}: {exc}") from exc

        self._run(key, store_value)

    def load(self, key: str) -> bytes:
        raw = self._run(key, lambda client: self._get(client, key))
        return self._decode_value(key, self._decode_doc(key, raw))

    def delete(self, key: str) -> None:
        """Remove a key, or a directory with everything below it. Missing is not an error."""
        rkey = self.redis_key(key)

        async def delete_key(client: redis.asyncio.Redis) -> None:
            kind = await client.type(rkey)
            if kind == b"zset":
                await self._delete_tree(client, rkey)
                await self._remove_from_index(client, rkey, is_dir=True)
                return
            await self._remove_from_index(client, rkey, is_dir=False)
            await client.delete(rkey)

        self._run(key, delete_key)

    async def _delete_tree(self, client: redis.asyncio.Redis, rkey: str) -> None:
        for member in await self._children(client, rkey):
            child = go_path_join(rkey, member.rstrip("/"))
            if member.endswith("/"):
                await self._delete_tree(client, child)
            else:
                await client.delete(child)
        await client.delete(rkey)

    def exists(self, key: str) -> bool:
        rkey = self.redis_key(key)

        async def key_exists(client: redis.asyncio.Redis) -> bool:
            return bool(await client.exists(rkey))

        return self._run(key, key_exists)

    def list(self, prefix: str, recursive: bool = False) -> list[str]:
        """Keys below `prefix` (directories too), sorted by name; children only unless recursive.

        FileNotFoundError when `prefix` is neither a directory nor a key, like FileStorage.
        """
        rkey = self.redis_key(prefix)
        base = prefix.rstrip("/")

        async def list_keys(client: redis.asyncio.Redis) -> list[str]:
            members = await self._children(client, rkey)
            if not members:
                if await client.exists(rkey):
                    return []
                raise FileNotFoundError(f"{prefix}: not found in {self.description}")
            keys: list[str] = []

            async def walk(members: list[str], rel: str) -> None:
                for member in sorted(members, key=lambda m: m.rstrip("/")):
                    name = member.rstrip("/")
                    child = f"{rel}/{name}" if rel else name
                    keys.append(f"{base}/{child}" if base else child)
                    if recursive and member.endswith("/"):
                        await walk(await self._children(client, go_path_join(rkey, child)), child)

            await walk(members, "")
            return keys

        return self._run(prefix, list_keys)

    def stat(self, key: str) -> KeyInfo:
        rkey = self.redis_key(key)

        async def value_or_newest_score(client: redis.asyncio.Redis) -> bytes | float:
            try:
                return await self._get(client, key)
            except IsADirectoryError:
                # A directory: its newest child's score is the closest thing to a modified time.
                newest = await client.zrange(rkey, -1, -1, withscores=True)
                return float(newest[0][1]) if newest else 0.0

        found = self._run(key, value_or_newest_score)
        if not isinstance(found, bytes):
            return KeyInfo(
                key=key,
                modified=datetime.fromtimestamp(found, tz=UTC),
                size=0,
                is_terminal=False,
            )
        doc = self._decode_doc(key, found)
        modified = parse_go_time(doc.get("modified")) or datetime.fromtimestamp(0, tz=UTC)
        size = doc.get("size")
        return KeyInfo(
            key=key,
            modified=modified,
            size=size if type(size) is int else 0,
            is_terminal=True,
        )

    def store_all(self, items: Sequence[tuple[str, bytes]]) -> None:
        store_all_or_none(self, items)


# --- locks -------------------------------------------------------------------------------------


def _lock_value(owner: LockOwner, created: datetime) -> str:
    # Any value unique to this holder works (redislock uses a random token); ours also says who
    # holds the lock, for the "waiting for ..." message of other nodes.
    doc: dict[str, object] = {
        "token": secrets.token_hex(16),
        "created": format_go_time(created),
        "pyproxy": owner.to_json(),
    }
    return json.dumps(doc, separators=(",", ":"))


def _decode_lock_value(raw: bytes) -> LockMeta:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return LockMeta(created=None, updated=None)  # a Caddy (redislock) token
    return LockMeta(
        created=parse_go_time(doc.get("created")),
        updated=None,
        owner=LockOwner.from_json(doc.get("pyproxy")),
    )


class _RedisHolder:
    """A lock we hold: its unique value and its refresh task (on the storage loop)."""

    __slots__ = ("name", "refresh", "value")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value
        self.refresh: asyncio.Task[None] | None = None


class RedisLocker:
    """Locks as Redis keys with an expiry (SET NX PX), refreshed while held.

    A lock whose holder dies, or stops refreshing, expires `stale_after_s` after its last
    refresh and the next waiter takes it. Refresh and release compare the holder's unique value
    first (in a Lua script, atomically), so only the holder extends or removes its lock. The
    refresh of each held lock is a task on the storage loop; `unlock` and the storage's `close`
    stop it. Lock operations that cannot reach Redis (or find the storage closed) raise
    LockError, the Locker contract, caused by the StorageUnavailableError.
    """

    def __init__(
        self,
        storage: RedisStorage,
        *,
        freshness_interval_s: float = LOCK_FRESHNESS_INTERVAL_S,
        poll_interval_s: float = LOCK_POLL_INTERVAL_S,
        stale_after_s: float = LOCK_STALE_AFTER_S,
    ) -> None:
        self.storage = storage
        self.freshness_interval_s = freshness_interval_s
        self.poll_interval_s = poll_interval_s
        self.stale_after_s = stale_after_s
        self._held: dict[str, _RedisHolder] = {}
        self._mu = threading.Lock()
        self._pid = os.getpid()

    def _forget_parent_locks(self) -> None:
        # In a forked child the locks in `_held` are the parent's: it holds and refreshes them,
        # and only it may release them. (The child starts with one thread: no race here.)
        if self._pid != os.getpid():
            self._held = {}
            self._mu = threading.Lock()
            self._pid = os.getpid()

    def lock_key(self, name: str) -> str:
        # The module: path.Join(key_prefix, "locks", name), the lock name as certmagic gives it.
        return self.storage.redis_key(go_path_join(PREFIX_LOCKS, name))

    def _ttl_ms(self) -> int:
        return max(1, int(self.stale_after_s * 1000))

    def lock(self, name: str, timeout_s: float | None = None) -> None:
        if not wait_for_lock(lambda: self.try_lock(name), self.poll_interval_s, timeout_s):
            raise LockTimeout(f"{self.lock_key(name)}: timed out waiting for lock {name!r}")

    def try_lock(self, name: str) -> bool:
        self._forget_parent_locks()
        key = self.lock_key(name)
        holder = _RedisHolder(name, _lock_value(LockOwner.current(), datetime.now(UTC)))
        ttl_ms = self._ttl_ms()

        async def take(client: redis.asyncio.Redis) -> bool:
            if not await client.set(key, holder.value, nx=True, px=ttl_ms):
                return False
            # Started here, right after the SET, so no await lies between taking the lock and
            # keeping it fresh; registered with the storage, whose close cancels it.
            holder.refresh = asyncio.create_task(self._keep_fresh(holder, key))
            self.storage._tasks.add(holder.refresh)
            return True

        try:
            taken = self.storage._run(key, take)
        except StorageUnavailableError as exc:
            raise LockError(f"{key}: obtaining lock: {exc}") from exc
        if taken:
            with self._mu:
                self._held[name] = holder
        return taken

    def unlock(self, name: str) -> None:
        self._forget_parent_locks()
        key = self.lock_key(name)
        with self._mu:
            holder = self._held.pop(name, None)
        if holder is None:
            raise LockError(f"{key}: lock {name!r} is not held by this process")

        async def release(client: redis.asyncio.Redis) -> object:
            # Stop refreshing first: a late refresh must not extend a lock we no longer hold.
            if holder.refresh is not None:
                holder.refresh.cancel()
                await asyncio.wait([holder.refresh])
            return await client.eval(_RELEASE_SCRIPT, 1, key, holder.value)

        try:
            released = self.storage._run(key, release)
        except StorageUnavailableError as exc:
            # It expires on its own once nobody refreshes it.
            raise LockError(f"{key}: releasing lock: {exc}") from exc
        if not released:
            raise LockError(f"{key}: lock {name!r} expired or was taken over by another holder")

    def unlock_all(self) -> None:
        self._forget_parent_locks()
        with self._mu:
            names = list(self._held)
        for name in names:
            with contextlib.suppress(LockError):
                self.unlock(name)

    def held(self, name: str) -> bool:
        self._forget_parent_locks()
        with self._mu:
            return name in self._held

    @contextlib.contextmanager
    def locked(self, name: str, timeout_s: float | None = None) -> Iterator[None]:
        self.lock(name, timeout_s)
        try:
            yield
        finally:
            self.unlock(name)

    def holder_of(self, name: str) -> LockMeta | None:
        key = self.lock_key(name)

        async def lock_value(client: redis.asyncio.Redis) -> object:
            return await client.get(key)

        try:
            raw = self.storage._run(key, lock_value)
        except StorageUnavailableError:
            return None
        if not isinstance(raw, bytes):
            return None
        return _decode_lock_value(raw)

    async def _keep_fresh(self, holder: _RedisHolder, key: str) -> None:
        ttl_ms = self._ttl_ms()

        async def refresh(client: redis.asyncio.Redis) -> object:
            return await client.eval(_REFRESH_SCRIPT, 1, key, holder.value, ttl_ms)

        try:
            while True:
                await asyncio.sleep(self.freshness_interval_s)
                try:
                    kept = await self.storage._guarded(key, refresh)
                except StorageUnavailableError as exc:
                    if self.storage.closed:
                        return
                    # Keep trying: the lock survives until its expiry, and Redis may be back.
                    log.warning("%s: refreshing lock failed, will retry: %s", key, exc)
                    continue
                if not kept:
                    log.warning("%s: lock %r expired or was taken over", key, holder.name)
                    return
        finally:
            task = asyncio.current_task()
            if task is not None:
                self.storage._tasks.discard(task)
