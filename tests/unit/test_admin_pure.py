"""The pure parts of proxy.admin (config paths, listen address and origin policy, autosave),
tested without a server: they import no aiohttp/socket/asyncio (see test_layering.py)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from config.errors import ConfigError
from proxy.admin.autosave import app_config_dir, persist_config
from proxy.admin.config_paths import (
    TraversalError,
    config_access,
    decode_json_body,
    go_json,
    index_ids,
    strip_meta_fields,
)
from proxy.admin.errors import APIError
from proxy.admin.origins import AccessPolicy, AdminAddress, allowed_origins, parse_admin_listen

# --- config paths -----------------------------------------------------------------------------


def test_config_access_semantics() -> None:
    root: dict[str, Any] = {"config": {"a": [1, 2], "o": {"k": "v"}}}
    assert config_access(root, "GET", "/config/a/1") == 2
    config_access(root, "PUT", "/config/new/deep", 5)  # PUT creates intermediate objects
    assert root["config"]["new"] == {"deep": 5}
    config_access(root, "POST", "/config/a/0", 3)  # POST to an index appends (like Caddy)
    assert root["config"]["a"] == [1, 2, 3]
    config_access(root, "DELETE", "/config/o/k")
    assert root["config"]["o"] == {}
    assert index_ids({"x": [{"@id": 7}, {"@id": "s", "y": {"@id": 1.5}}]}) == {
        "7": "/config/x/0",
        "s": "/config/x/1",
        "1.5": "/config/x/1/y",
    }
    assert strip_meta_fields({"@id": "a", "b": [{"@id": 1, "c": 2}]}) == {"b": [{"c": 2}]}


def test_config_access_statuses_follow_caddy() -> None:
    root: dict[str, Any] = {"config": {"o": {"k": "v"}, "a": [1]}}
    with pytest.raises(TraversalError) as exists:
        config_access(root, "PUT", "/config/o/k", 1)
    assert (exists.value.status, str(exists.value)) == (409, "[/config/o/k] key already exists: k")
    with pytest.raises(TraversalError) as missing:
        config_access(root, "PATCH", "/config/o/nope", 1)
    assert missing.value.status == 404
    with pytest.raises(TraversalError, match="invalid array index '01'") as index:
        config_access(root, "GET", "/config/a/01")  # one element, one name: canonical only
    assert index.value.status is None  # a plain error: the HTTP layer picks 400 or 500


def test_index_ids_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate ID 'x' found at /config/a and /config/b"):
        index_ids({"a": {"@id": "x"}, "b": {"@id": "x"}})


def test_go_json_is_gos_encoding() -> None:
    # Sorted keys, compact, HTML-sensitive characters escaped, trailing newline (json.Encoder).
    assert go_json({"b": "<&>", "a": [1]}) == b'{"a":[1],"b":"\\u003c\\u0026\\u003e"}\n'


def test_decode_json_body_refuses_what_go_refuses() -> None:
    assert decode_json_body(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError, match="invalid character 'N' looking for beginning of value"):
        decode_json_body(b"[NaN]")
    with pytest.raises(ValueError, match="invalid UTF-8 at offset 1"):
        decode_json_body(b'"\xff"')


# --- listen address and origins ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "address", "text"),
    [
        ("localhost:2019", AdminAddress("tcp", "localhost", 2019), "localhost:2019"),
        ("[::1]:2020", AdminAddress("tcp", "::1", 2020), "[::1]:2020"),
        ("tcp4/:2019", AdminAddress("tcp4", "", 2019), "tcp4/:2019"),
        (
            "unix//run/admin.sock",
            AdminAddress("unix", "/run/admin.sock", 0),
            "unix//run/admin.sock",
        ),
    ],
)
def test_parse_admin_listen(listen: str, address: AdminAddress, text: str) -> None:
    assert parse_admin_listen(listen) == address
    assert str(address) == text


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("localhost:2019-2020", "must be exactly one listener address"),
        ("localhost", "missing port in address localhost"),
        ("localhost:http", "invalid port: http"),
        ("unix/", "missing socket path"),
    ],
)
def test_parse_admin_listen_errors(listen: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_admin_listen(listen)


def test_loopback_listener_allows_every_loopback_name() -> None:
    hosts = [a.host for a in allowed_origins(parse_admin_listen("127.0.0.1:2019"), None)]
    assert hosts == ["localhost:2019", "[::1]:2019", "127.0.0.1:2019"]
    # An empty `origins` list allows nothing, on purpose (Caddy).
    assert allowed_origins(parse_admin_listen("127.0.0.1:2019"), []) == []


def _policy(listen: str, enforce_origin: bool = False) -> AccessPolicy:
    return AccessPolicy.for_listener(parse_admin_listen(listen), enforce_origin, None)


def _refusal(policy: AccessPolicy, **headers: str) -> tuple[int, str]:
    with pytest.raises(APIError) as info:
        policy.check(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))
    return info.value.status, info.value.message


def test_access_policy_checks_host_and_origin() -> None:
    policy = _policy("localhost:2019")
    assert policy.check(CIMultiDict({"Host": "localhost:2019"})) is None
    assert _refusal(policy, Host="evil:2019") == (403, "host not allowed: evil:2019")
    # Header names are case-insensitive (RFC 9110 §5.1); the echoed origin has no path.
    echoed = policy.check(CIMultiDict({"host": "localhost:2019", "origin": "http://[::1]:2019"}))
    assert echoed == "http://[::1]:2019"
    assert _refusal(policy, Host="localhost:2019", Origin="http://evil:2019") == (
        403,
        "client is not allowed to access from origin 'http://evil:2019'",
    )
    assert _refusal(policy, Host="localhost:2019", Origin="null")[0] == 400
    assert _refusal(policy, Host="localhost:2019", Upgrade="websocket") == (
        400,
        "WebSocket connections aren't allowed.",
    )


def test_access_policy_enforce_origin_needs_an_origin() -> None:
    policy = _policy("localhost:2019", enforce_origin=True)
    assert _refusal(policy, Host="localhost:2019") == (
        403,
        "client is not allowed to access from origin ''",
    )


def test_unix_listener_skips_the_host_check() -> None:
    # Browsers cannot reach a unix socket; file permissions guard it (Caddy).
    assert _policy("unix//run/admin.sock").check(CIMultiDict({"Host": "anything"})) is None


# --- autosave -----------------------------------------------------------------------------------


def test_app_config_dir_is_caddys() -> None:
    assert app_config_dir({"XDG_CONFIG_HOME": "/config", "HOME": "/root"}) == Path("/config/caddy")
    assert app_config_dir({"HOME": "/home/u"}) == Path("/home/u/.config/caddy")
    assert app_config_dir({}) == Path("./caddy")


def test_persist_config_writes_private_file(tmp_path: Path) -> None:
    target = tmp_path / "caddy" / "autosave.json"
    config = {"apps": {"http": {}}, "admin": {"listen": "localhost:2019"}}
    assert persist_config(config, target) == target
    assert json.loads(target.read_bytes()) == config
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700


def test_persist_false_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "autosave.json"
    assert persist_config({"admin": {"config": {"persist": False}}}, target) is None
    assert not target.exists()
