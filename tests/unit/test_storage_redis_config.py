"""`storage redis { ... }`: the Caddyfile adapter (caddy-storage-redis's UnmarshalCaddyfile) and
the JSON config as the runtime resolves it, with refusals naming the JSON path."""

from __future__ import annotations

import argparse
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from acme_client.redis_storage import (
    COMPRESSION_FLATE,
    COMPRESSION_NONE,
    COMPRESSION_ZLIB,
    RedisConfigError,
    RedisStorageConfig,
    parse_redis_storage_config,
)
from config.adapt import adapt_caddyfile
from config.errors import ConfigError
from proxy.certs import redis_storage_from_config, storage_root_from_config
from proxy.trust_cli import trust_command

# What the module's Caddyfile unmarshalling leaves in every field it is not told about (its New()),
# marshalled whole by Caddy: `caddy adapt` prints all of these.
MODULE_DEFAULTS: dict[str, Any] = {
    "module": "redis",
    "client_type": "simple",
    "address": None,
    "host": ["127.0.0.1"],
    "port": ["6379"],
    "db": "0",
    "timeout": "",
    "username": "",
    "password": "",
    "sentinel_password": "",
    "master_name": "",
    "key_prefix": "caddy",
    "encryption_key": "",
    "compression": "",
    "tls_enabled": False,
    "tls_insecure": False,
    "tls_server_certs_pem": "",
    "tls_server_certs_path": "",
    "route_by_latency": False,
    "route_randomly": False,
}


def storage_json(options: str) -> dict[str, Any]:
    config, _ = adapt_caddyfile("{\n" + options + "\n}\n:80\n", "Caddyfile")
    result: dict[str, Any] = config["storage"]
    return result


def adapt_error(options: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        adapt_caddyfile("{\n" + options + "\n}\n:80\n", "Caddyfile")
    return info.value


def test_bare_storage_redis_is_the_module_defaults() -> None:
    assert storage_json("\tstorage redis") == MODULE_DEFAULTS


def test_every_option_lands_in_its_json_field() -> None:
    got = storage_json(
        """\tstorage redis {
\t\thost 10.0.0.5
\t\tport 6380
\t\tdb 3
\t\ttimeout 7
\t\tusername pyproxy
\t\tpassword s3cret
\t\tkey_prefix tenant/caddy
\t\tencryption_key 0123456789abcdef0123456789abcdef
\t\tcompression true
\t\ttls_enabled true
\t\ttls_insecure 1
\t\ttls_server_certs_path /etc/redis-ca.pem
\t}"""
    )
    assert got == MODULE_DEFAULTS | {
        "host": ["10.0.0.5"],
        "port": ["6380"],
        "db": "3",
        "timeout": "7",
        "username": "pyproxy",
        "password": "s3cret",
        "key_prefix": "tenant/caddy",
        "encryption_key": "0123456789abcdef0123456789abcdef",
        "compression": "flate",  # the legacy boolean maps to flate
        "tls_enabled": True,
        "tls_insecure": True,
        "tls_server_certs_path": "/etc/redis-ca.pem",
    }


def test_cluster_flag_and_value_blocks() -> None:
    got = storage_json(
        """\tstorage redis cluster {
\t\taddress {
\t\t\tr1.example:6379
\t\t\tr2.example:6379
\t\t}
\t\troute_by_latency false
\t\taes_key 0123456789abcdef0123456789abcdef
\t\tcompression zlib
\t}"""
    )
    assert got["client_type"] == "cluster"
    assert got["address"] == ["r1.example:6379", "r2.example:6379"]
    assert got["encryption_key"] == "0123456789abcdef0123456789abcdef"
    assert got["compression"] == "zlib"
    assert storage_json("\tstorage redis failover")["client_type"] == "failover"


def test_empty_strings_keep_the_defaults() -> None:
    # The module only overwrites these when the value is not empty.
    got = storage_json('\tstorage redis {\n\t\tkey_prefix ""\n\t\tusername ""\n\t}')
    assert got["key_prefix"] == "caddy" and got["username"] == ""


@pytest.mark.parametrize(
    ("options", "message", "line"),
    [
        ("\tstorage redis sentinel", "wrong argument count", 2),
        ("\tstorage redis {\n\t\tbogus 1\n\t}", "unknown configuration key: bogus", 3),
        (
            "\tstorage redis {\n\t\ttls_enabled yes\n\t}",
            "invalid boolean value for 'tls_enabled': yes",
            3,
        ),
        (
            "\tstorage redis {\n\t\tcompression gzip\n\t}",
            "invalid value for 'compression': gzip",
            3,
        ),
        (
            "\tstorage redis {\n\t\thost {\n\t\t}\n\t}",
            "no value supplied for configuraton key 'host'",
            4,
        ),
    ],
)
def test_caddyfile_errors_name_the_line(options: str, message: str, line: int) -> None:
    err = adapt_error(options)
    assert message in str(err)
    assert err.line == line or f"Caddyfile:{line}" in str(err)


# --- the JSON config, as the runtime resolves it -------------------------------------------------


def test_adapted_defaults_resolve_to_localhost() -> None:
    cfg = parse_redis_storage_config(MODULE_DEFAULTS)
    assert cfg == RedisStorageConfig()
    assert cfg.describe() == "redis://127.0.0.1:6379/0/caddy"


def test_fields_resolve_like_finalize_configuration() -> None:
    doc = {
        "module": "redis",
        "address": ["[::1]:6390"],
        "host": ["ignored.example"],
        "db": 2,  # the legacy integer form
        "timeout": "4",
        "key_prefix": " /a/b/ ",
        "encryption_key": "0123456789abcdef0123456789abcdef-and-more",
        "compression": True,
        "tls_enabled": True,
        "tls_server_certs_pem": "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    }
    cfg = parse_redis_storage_config(doc)
    assert (cfg.host, cfg.port, cfg.db, cfg.timeout_s) == ("::1", 6390, 2, 4)
    assert cfg.key_prefix == "a/b"
    assert cfg.encryption_key == b"0123456789abcdef0123456789abcdef"  # truncated to 32
    assert cfg.compression == COMPRESSION_FLATE
    assert cfg.describe() == "rediss://[::1]:6390/2/a/b"
    assert parse_redis_storage_config({"compression": "zlib"}).compression == COMPRESSION_ZLIB
    assert parse_redis_storage_config({"compression": "false"}).compression == COMPRESSION_NONE
    assert parse_redis_storage_config({"key_prefix": ""}).key_prefix == ""


def test_placeholders_are_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_TEST_PASSWORD", "from-env")
    config = {"storage": {"module": "redis", "password": "{env.REDIS_TEST_PASSWORD}", "db": "5"}}
    cfg = redis_storage_from_config(config)
    assert cfg is not None and cfg.password == "from-env" and cfg.db == 5
    assert "from-env" not in repr(cfg)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"client_type": "cluster"}, "storage.client_type: 'cluster' is not supported"),
        ({"client_type": "failover"}, "storage.client_type: 'failover' is not supported"),
        ({"address": ["a:1", "b:2"]}, "storage.address: 2 addresses make a Redis cluster"),
        ({"host": ["a", "b"]}, "storage.address: 2 addresses make a Redis cluster"),
        ({"route_by_latency": True}, "storage.route_by_latency: cluster routing"),
        ({"route_randomly": True}, "storage.route_randomly: cluster routing"),
        ({"master_name": "m"}, "storage.master_name: Sentinel (failover) mode"),
        ({"sentinel_password": "x"}, "storage.sentinel_password: Sentinel (failover) mode"),
        ({"address": ["no-port"]}, "storage.address[0]: invalid address: no-port"),
        ({"port": ["http"]}, "storage.port: invalid port value: http"),
        ({"db": "-1"}, "storage.db: invalid db value: -1"),
        ({"db": True}, "storage.db: expected a number or a string"),
        ({"timeout": 5}, "storage.timeout: expected a string"),
        ({"timeout": "5s"}, "storage.timeout: invalid timeout value: 5s"),
        ({"key_prefix": "a/../b"}, "storage.key_prefix: invalid key_prefix segment: '..'"),
        ({"encryption_key": "short"}, "storage.encryption_key: invalid length"),
        ({"compression": "gzip"}, "storage.compression: invalid compression value: 'gzip'"),
        ({"tls_enabled": "true"}, "storage.tls_enabled: expected true or false"),
        (
            {"tls_server_certs_pem": "x", "tls_server_certs_path": "/y"},
            "storage.tls_server_certs_path: cannot be given alongside tls_server_certs_pem",
        ),
        ({"tls_server_certs_pem": "not pem"}, "storage.tls_server_certs_pem: no PEM"),
        ({"host": "127.0.0.1"}, "storage.host: expected an array of strings"),
        ({"aes_key": "x"}, "storage.aes_key: unknown field"),
    ],
)
def test_what_pyproxy_cannot_honour_is_a_config_error(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(RedisConfigError) as info:
        parse_redis_storage_config({"module": "redis", **doc})
    assert str(info.value).startswith(message)
    # The runtime surfaces it as a config error with the same text.
    with pytest.raises(ConfigError, match=re.escape(message)):
        redis_storage_from_config({"storage": {"module": "redis", **doc}})


def test_file_system_storage_is_not_redis() -> None:
    config = {"storage": {"module": "file_system", "root": "/srv/caddy"}}
    assert redis_storage_from_config(config) is None
    assert str(storage_root_from_config(config)) == "/srv/caddy"
    assert redis_storage_from_config({}) is None


def test_trust_with_redis_storage_never_falls_back_to_the_default_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pyproxy trust` reads the local CA from the configured Redis (tests/integration/
    # test_trust_redis.py); a Redis that does not answer is an error, never the CA of the
    # default directory.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = tmp_path / "config.json"
    storage = {"module": "redis", "host": ["127.0.0.1"], "port": [str(closed_port)], "timeout": "1"}
    config.write_text(json.dumps({"storage": storage}))
    args = argparse.Namespace(config=str(config), adapter="json", ca="local", install=False)
    assert trust_command(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: local CA:") and f"127.0.0.1:{closed_port}" in err, err
    assert not (tmp_path / "data").exists()


def test_the_swarm_stack_files_caddyfile_snippet_adapts_to_redis_storage() -> None:
    """deploy/stack-redis.yml tells the operator what to add to the Caddyfile: it must adapt to
    a Redis storage at the stack's `redis` service."""
    stack = (Path(__file__).resolve().parents[2] / "deploy" / "stack-redis.yml").read_text()
    lines = stack.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Add this"))
    snippet = []
    for line in lines[start + 2 :]:
        if not line.startswith("#   "):
            break
        snippet.append(line[4:])
    config, _ = adapt_caddyfile("\n".join(snippet) + "\n:80\n", "Caddyfile")
    cfg = parse_redis_storage_config(config["storage"])
    assert config["storage"]["module"] == "redis"
    assert (cfg.host, cfg.port) == ("redis", 6379)
    assert "redis:" in stack and "redis_data:" in stack  # the service and its volume
