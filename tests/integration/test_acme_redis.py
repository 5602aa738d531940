"""ACME against a real Pebble with the certificates in a real redis-server (pyproxy issue #17).

Managers on RedisStorage obtain certificates; the challenge tokens, account, certificate and
locks all live in Redis under caddy-storage-redis's layout, so another process (another node)
reading the same Redis serves the certificate, and two managers share one order per name.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from pebblekit import (
    AcmeEnv,
    acme_env_fixture,  # noqa: F401  (provides the acme_env fixture)
    ipv6_loopback_available,
    requires_pebble,
)
from rediskit import requires_redis, running_redis

from acme_client.certificates import find_stored_certificate
from acme_client.storage import challenge_tokens_prefix, site_cert_key, user_private_key_key

pytestmark = [requires_pebble, requires_redis]

# Another process: open the same Redis, find the stored certificate and print its chain.
_READER = """
import sys
sys.path.insert(0, sys.argv[1])
from acme_client.certificates import find_stored_certificate
from acme_client.redis_storage import RedisStorage, RedisStorageConfig
storage = RedisStorage.from_config(RedisStorageConfig(host="127.0.0.1", port=int(sys.argv[2])))
cert = find_stored_certificate(storage, sys.argv[3])
assert cert is not None, "no certificate in storage"
sys.stdout.write(cert.certificate_pem.decode())
"""


async def test_manager_on_redis_obtains_and_another_process_reads_it(
    acme_env: AcmeEnv, tmp_path: Path
) -> None:
    name = "redis.example.com"
    with running_redis(tmp_path / "redis") as server:
        storage = server.storage()
        pebble, responder = await acme_env.start_ca(
            ipv6=ipv6_loopback_available(), storage=server.storage()
        )
        mgr = acme_env.manager(acme_env.issuer_config(pebble), storage=storage)
        await mgr.start([name])
        assert await mgr.wait_ready(name, 60), mgr.status()
        await mgr.stop()
        # The responder answered from Redis: the challenge token was published there.
        assert any(host == name for _peer, host, _path in responder.requests)
        issuer_key = mgr.issuers[0].issuer_key
        assert storage.exists(user_private_key_key(issuer_key, "admin@example.com"))
        # Tokens cleaned up; an emptied "directory" disappears in Redis (the module's index).
        assert not storage.exists(challenge_tokens_prefix(issuer_key))
        client = server.client()
        keys = {k.decode() for k in client.keys("*") if isinstance(k, bytes)}
        client.close()
        assert f"caddy/{site_cert_key(issuer_key, name)}" in keys
        assert not any(k.startswith("caddy/locks/") for k in keys)  # released
        assert not any(not k.startswith("caddy") for k in keys)  # all under the prefix

        root = str(Path(__file__).resolve().parents[2])
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _READER, root, str(server.port), name],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        installed = next(c for n, c, _k in acme_env.installed if n == name)
        assert done.stdout == installed

        # A manager that starts later on the same Redis finds it: no second order.
        later = acme_env.manager(acme_env.issuer_config(pebble), storage=server.storage())
        await later.start([name])
        assert await later.wait_ready(name, 30), later.status()
        assert later.orders_placed() == 0
        await later.stop()


async def test_two_managers_sharing_redis_order_each_name_once(
    acme_env: AcmeEnv, tmp_path: Path
) -> None:
    names = ["one.example.com", "two.example.com"]
    with running_redis(tmp_path / "redis") as server:
        pebble, _responder = await acme_env.start_ca(
            ipv6=ipv6_loopback_available(), storage=server.storage()
        )
        issuer = acme_env.issuer_config(pebble)
        # Two nodes: separate clients, separate lockers, one Redis.
        managers = [acme_env.manager(issuer, storage=server.storage()) for _ in range(2)]
        await asyncio.gather(*(m.start(names) for m in managers))
        for mgr in managers:
            for name in names:
                assert await mgr.wait_ready(name, 90), mgr.status()
        for mgr in managers:
            await mgr.stop()
        assert sum(m.orders_placed() for m in managers) == len(names)
        assert pebble.new_orders() == len(names)
        assert sum(m.accounts_registered() for m in managers) == 1
        reader = server.storage()
        for name in names:
            stored = find_stored_certificate(reader, name)
            assert stored is not None
            served = {c for n, c, _k in acme_env.installed if n == name}
            assert served == {stored.certificate_pem}
