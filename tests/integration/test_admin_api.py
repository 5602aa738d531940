"""The admin API (proxy.admin) served for real on loopback and driven with a real HTTP client.

The engine side is `FakeEngine`, a small in-memory implementation of `AdminController` that
validates configs with the real model loader (config.model.load_model) — a stand-in for the
engine until it is wired to the admin server.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from config.model import load_model
from proxy.admin.api import build_admin_app
from proxy.admin.config_paths import strip_meta_fields
from proxy.admin.controller import ReloadError
from proxy.admin.server import AdminServer, start_admin_server
from proxy.metrics import ProxyMetrics, render_snapshots

ADMIN_LOCAL = {"listen": "127.0.0.1:0"}
BUSY_PORT = 1  # a listen port FakeEngine treats as "in use" (ReloadError), never bound


class FakeEngine:
    """AdminController in memory: validates like the engine, records what it was asked."""

    def __init__(self, config: dict[str, Any]) -> None:
        load_model(strip_meta_fields(config))
        self.config = config
        self.loads: list[tuple[dict[str, Any], bool]] = []
        self.stopped = asyncio.Event()
        self.metrics = ProxyMetrics(process=False)
        self.worker = ProxyMetrics(process=False)  # what a worker process would report
        self.metrics.record_reload(True, now=1700000000.0)

    async def load(self, config: dict[str, Any], force: bool) -> None:
        try:
            load_model(strip_meta_fields(config))
            for srv in config.get("apps", {}).get("http", {}).get("servers", {}).values():
                for addr in srv.get("listen", []):
                    if addr.endswith(f":{BUSY_PORT}"):
                        raise ReloadError(f"listening on {addr}: address already in use")
        except Exception:
            self.metrics.record_reload(False)
            raise
        self.loads.append((config, force))
        self.config = config
        self.metrics.record_reload(True)

    async def current_config(self) -> dict[str, Any]:
        return self.config

    async def stop(self) -> None:
        self.stopped.set()

    async def upstreams(self) -> list[dict[str, Any]]:
        return [
            {"address": "127.0.0.1:9001", "num_requests": 3, "fails": 0},
            {"address": "127.0.0.1:9002", "num_requests": 0, "fails": 2},
        ]

    async def metrics_text(self) -> str:
        return render_snapshots([self.metrics.snapshot(), self.worker.snapshot()])


def make_config(
    *, listen: str = ":8080", admin: dict[str, Any] | None = None, body: str = "hi"
) -> dict[str, Any]:
    return {
        "admin": dict(ADMIN_LOCAL if admin is None else admin),
        "apps": {
            "http": {
                "servers": {
                    "srv0": {
                        "listen": [listen],
                        "routes": [
                            {
                                "@id": "hello",
                                "handle": [{"handler": "static_response", "body": body}],
                            }
                        ],
                    }
                }
            }
        },
    }


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CADDY_ADMIN", raising=False)
    return tmp_path / "xdg" / "caddy" / "autosave.json"


@pytest.fixture
async def admin(xdg: Path) -> AsyncIterator[tuple[FakeEngine, AdminServer]]:
    engine = FakeEngine(make_config())
    server = await start_admin_server(engine, engine.config["admin"], metrics=engine.metrics)
    try:
        yield engine, server
    finally:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def read(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    return json.loads(text) if text.strip() else None


# --- /config/ ----------------------------------------------------------------------------


async def test_get_config_and_traversal(admin: Any, client: aiohttp.ClientSession) -> None:
    engine, server = admin
    async with client.get(server.url + "/config/") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        raw = await resp.read()
        # Go's encoder: keys sorted, compact, one trailing newline.
        assert raw == json.dumps(engine.config, sort_keys=True, separators=(",", ":")).encode() + (
            b"\n"
        )
        assert resp.headers["Etag"].startswith('"/config/ ')
    async with client.get(server.url + "/config/apps/http/servers/srv0/listen/0") as resp:
        assert (resp.status, await read(resp)) == (200, ":8080")
    async with client.get(server.url + "/config/apps/http/servers/srv0/nope") as resp:
        assert (resp.status, await resp.text()) == (200, "null\n")
    async with client.get(server.url + "/config/apps/http/servers/srv0/listen/7") as resp:
        assert resp.status == 400
        assert await read(resp) == {
            "error": "[/config/apps/http/servers/srv0/listen/7] array index out of bounds: 7"
        }
    async with client.get(server.url + "/config/apps/http/servers/srv0/listen/01") as resp:
        assert resp.status == 400
        assert "non-canonical array index" in (await read(resp))["error"]
    async with client.get(server.url + "/config", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (301, "/config/")
    async with client.get(server.url + "/id/hello/handle/0/body") as resp:
        assert (resp.status, await read(resp)) == (200, "hi")
    async with client.get(server.url + "/id/nobody") as resp:
        assert (resp.status, await read(resp)) == (404, {"error": "unknown object ID 'nobody'"})


async def test_config_changes_go_through_load(admin: Any, client: aiohttp.ClientSession) -> None:
    engine, server = admin
    base = server.url + "/config/apps/http/servers/srv0"
    async with client.post(base + "/listen", json=":8081") as resp:
        assert resp.status == 200, await resp.text()
    assert engine.config["apps"]["http"]["servers"]["srv0"]["listen"] == [":8080", ":8081"]
    async with client.patch(base + "/listen/0", json=":9090") as resp:
        assert resp.status == 200
    async with client.put(base + "/listen/0", json=":7070") as resp:
        assert resp.status == 200
    assert engine.config["apps"]["http"]["servers"]["srv0"]["listen"] == [
        ":7070",
        ":9090",
        ":8081",
    ]
    async with client.delete(base + "/listen/2") as resp:
        assert resp.status == 200
    async with client.post(base + "/listen/...", json=[":1111", ":2222"]) as resp:
        assert resp.status == 200
    assert engine.config["apps"]["http"]["servers"]["srv0"]["listen"] == [
        ":7070",
        ":9090",
        ":1111",
        ":2222",
    ]
    async with client.patch(server.url + "/id/hello/handle/0/body", json="bye") as resp:
        assert resp.status == 200
    assert engine.config["apps"]["http"]["servers"]["srv0"]["routes"][0]["handle"][0]["body"] == (
        "bye"
    )
    loads = len(engine.loads)
    async with client.put(base + "/listen", json=[":1"]) as resp:
        assert resp.status == 409
        assert "key already exists: listen" in (await read(resp))["error"]
    async with client.patch(base + "/nothing", json=1) as resp:
        assert resp.status == 404
        assert "key does not exist: nothing" in (await read(resp))["error"]
    async with client.post(base + "/listen", data=b'":1"') as resp:
        assert resp.status == 400
        assert "'application/json' required" in (await read(resp))["error"]
    # A change the engine rejects leaves the old config in place.
    async with client.patch(base + "/listen", json=f":{BUSY_PORT}") as resp:
        assert resp.status == 400
    async with client.patch(server.url + "/config/apps/bogus", json={}) as resp:
        assert resp.status == 404
    async with client.post(server.url + "/config/apps/bogus", json={}) as resp:
        assert resp.status == 400
        assert "unknown module: bogus" in (await read(resp))["error"]
    assert len(engine.loads) == loads
    assert "bogus" not in engine.config["apps"]


async def test_if_match_guards_changes(admin: Any, client: aiohttp.ClientSession) -> None:
    engine, server = admin
    url = server.url + "/config/apps/http/servers/srv0/listen"
    async with client.get(url) as resp:
        etag = resp.headers["Etag"]
    async with client.post(url, json=":8082", headers={"If-Match": etag}) as resp:
        assert resp.status == 200
    async with client.post(url, json=":8083", headers={"If-Match": etag}) as resp:
        assert resp.status == 412
        assert await read(resp) == {"error": "If-Match header did not match current config hash"}
    async with client.post(url, json=":8083", headers={"If-Match": "nope"}) as resp:
        assert resp.status == 400
    assert engine.config["apps"]["http"]["servers"]["srv0"]["listen"] == [":8080", ":8082"]


# --- /load ---------------------------------------------------------------------------------


async def test_load_json(admin: Any, client: aiohttp.ClientSession, xdg: Path) -> None:
    engine, server = admin
    new = make_config(listen=":8090", body="new")
    async with client.post(server.url + "/load", json=new) as resp:
        assert (resp.status, await resp.text()) == (200, "")
    assert engine.config == new
    assert engine.loads[-1] == (new, False)
    # Pushed configs are autosaved (admin.config.persist defaults to true).
    assert json.loads(xdg.read_text()) == new
    async with client.get(server.url + "/config/apps/http/servers/srv0/listen") as resp:
        assert await read(resp) == [":8090"]


async def test_load_unchanged_is_a_no_op_unless_forced(
    admin: Any, client: aiohttp.ClientSession
) -> None:
    engine, server = admin
    same = json.loads(json.dumps(engine.config))
    async with client.post(server.url + "/load", json=same) as resp:
        assert resp.status == 200
    assert engine.loads == []
    headers = {"Cache-Control": "must-revalidate"}
    async with client.post(server.url + "/load", json=same, headers=headers) as resp:
        assert resp.status == 200
    assert engine.loads == [(same, True)]


async def test_load_errors_keep_the_old_config(admin: Any, client: aiohttp.ClientSession) -> None:
    engine, server = admin
    old = engine.config
    bad = make_config()
    bad["apps"]["frobnicate"] = {}
    async with client.post(server.url + "/load", json=bad) as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"].startswith("application/json")
        assert await read(resp) == {
            "error": "loading config: loading new config: apps.frobnicate: unknown module: "
            "frobnicate"
        }
    async with client.post(server.url + "/load", json=make_config(listen=f":{BUSY_PORT}")) as r:
        assert r.status == 400
        assert (await read(r))["error"] == (
            f"loading config: loading new config: listening on :{BUSY_PORT}: address already in use"
        )
    async with client.post(
        server.url + "/load", data=b"{nope", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        assert (await read(resp))["error"].startswith("loading config: decoding request body: ")
    dup = make_config()
    dup["apps"]["http"]["servers"]["srv0"]["@id"] = "hello"
    async with client.post(server.url + "/load", json=dup) as resp:
        assert resp.status == 400
        assert "duplicate ID 'hello'" in (await read(resp))["error"]
    async with client.get(server.url + "/load") as resp:
        assert (resp.status, await read(resp)) == (405, {"error": "method not allowed"})
    # A bad admin address is refused before the engine switches (it would strand the API).
    async with client.post(server.url + "/load", json=make_config(admin={"listen": "x"})) as r:
        assert r.status == 400
        assert "missing port in address x" in (await read(r))["error"]
    assert engine.config is old
    assert engine.loads == []
    # The failed attempts show in the reload gauge.
    async with client.get(server.url + "/metrics") as resp:
        text = await resp.text()
    assert "caddy_config_last_reload_successful 0\n" in text


async def test_load_caddyfile(admin: Any, client: aiohttp.ClientSession) -> None:
    engine, server = admin
    caddyfile = '{\n\tadmin 127.0.0.1:0\n}\n\n:8085 {\n\trespond "from caddyfile"\n}\n'
    headers = {"Content-Type": "text/caddyfile"}
    async with client.post(server.url + "/load", data=caddyfile, headers=headers) as resp:
        assert (resp.status, await resp.text()) == (200, "")
    srv = engine.config["apps"]["http"]["servers"]["srv0"]
    assert srv["listen"] == [":8085"]
    assert engine.config["admin"] == {"listen": "127.0.0.1:0"}
    # Adapter warnings come back as the response body (here: the file is not formatted).
    unformatted = caddyfile.replace("\t", "    ").replace("from caddyfile", "again")
    async with client.post(server.url + "/load", data=unformatted, headers=headers) as resp:
        assert resp.status == 200
        warnings = await read(resp)
    assert isinstance(warnings, list) and warnings
    assert "not formatted" in warnings[0]["message"]
    assert engine.config["apps"]["http"]["servers"]["srv0"]["routes"] != srv["routes"]
    broken = "{\n\tadmin 127.0.0.1:0\n}\n\n:8085 {\n\tfrobnicate\n}\n"
    async with client.post(server.url + "/load", data=broken, headers=headers) as resp:
        assert resp.status == 400
        assert await read(resp) == {
            "error": "adapting config using caddyfile adapter: "
            "Caddyfile:6: unrecognized directive: frobnicate"
        }
    async with client.post(
        server.url + "/load", data=b"x", headers={"Content-Type": "text/yaml"}
    ) as resp:
        assert (resp.status, await read(resp)) == (
            400,
            {"error": "unrecognized config adapter 'yaml'"},
        )
    async with client.post(
        server.url + "/adapt", data=caddyfile, headers={"Content-Type": "text/caddyfile"}
    ) as resp:
        assert resp.status == 200
        assert (await read(resp))["result"]["apps"]["http"]["servers"]["srv0"]["listen"] == [
            ":8085"
        ]


# --- Host and Origin checks -----------------------------------------------------------------


async def test_host_and_origin_checks_on_loopback(
    admin: Any, client: aiohttp.ClientSession
) -> None:
    _, server = admin
    url = server.url + "/config/"
    port = server.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        async with client.get(url, headers={"Host": host}) as resp:
            assert resp.status == 200, host
    async with client.get(url, headers={"Host": "evil.example"}) as resp:
        assert resp.status == 403
        assert await read(resp) == {"error": "host not allowed: evil.example"}
    async with client.get(url, headers={"Host": f"localhost:{port + 1}"}) as resp:
        assert resp.status == 403
    origin = f"http://localhost:{port}"
    async with client.get(url, headers={"Origin": origin + "/some/page"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == origin
    async with client.get(url, headers={"Origin": "http://evil.example"}) as resp:
        assert resp.status == 403
        assert await read(resp) == {
            "error": "client is not allowed to access from origin 'http://evil.example'"
        }
    async with client.get(url, headers={"Origin": "null"}) as resp:
        assert resp.status == 400
        assert await read(resp) == {"error": "Buggy browser is sending null Origin header."}
    async with client.get(url, headers={"Sec-Fetch-Mode": "no-cors"}) as resp:
        assert resp.status == 400
    async with client.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as r:
        assert (r.status, await read(r)) == (
            400,
            {"error": "WebSocket connections aren't allowed."},
        )
    # A browser's cross-site POST never gets to change the config.
    async with client.post(
        server.url + "/load", json={}, headers={"Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403


async def test_enforce_origin_and_custom_origins(client: aiohttp.ClientSession) -> None:
    engine = FakeEngine(make_config())
    admin_cfg = {"listen": "127.0.0.1:0", "enforce_origin": True}
    server = await start_admin_server(engine, admin_cfg, persist=False)
    try:
        url = server.url + "/config/"
        async with client.get(url) as resp:
            assert resp.status == 403
            assert await read(resp) == {"error": "client is not allowed to access from origin ''"}
        origin = f"http://127.0.0.1:{server.port}"
        async with client.get(url, headers={"Origin": origin}) as resp:
            assert resp.status == 200
        # Explicit origins replace the listen-address default (for Host too, as in Caddy);
        # a scheme in an origin must match.
        await server.update(
            {
                "listen": "127.0.0.1:0",
                "enforce_origin": True,
                "origins": ["https://panel.example", "tools.example:8443"],
            }
        )
        async with client.get(url, headers={"Origin": origin}) as resp:
            assert resp.status == 403
        async with client.get(
            url, headers={"Host": "panel.example", "Origin": "https://panel.example"}
        ) as resp:
            assert resp.status == 200
        async with client.get(
            url, headers={"Host": "panel.example", "Origin": "http://panel.example"}
        ) as resp:
            assert resp.status == 403
        async with client.get(
            url, headers={"Host": "tools.example:8443", "Origin": "http://tools.example:8443"}
        ) as resp:
            assert resp.status == 200
    finally:
        await server.close()


async def test_wildcard_listener_skips_host_check(client: aiohttp.ClientSession) -> None:
    engine = FakeEngine(make_config())
    server = await start_admin_server(engine, {"listen": "0.0.0.0:0"}, persist=False)
    try:
        async with client.get(
            f"http://127.0.0.1:{server.port}/config/", headers={"Host": "anything.example"}
        ) as resp:
            assert resp.status == 200
    finally:
        await server.close()


# --- /stop, /metrics, /reverse_proxy/upstreams, unknown paths ------------------------------


async def test_stop_answers_then_stops(admin: Any, client: aiohttp.ClientSession) -> None:
    engine, server = admin
    async with client.get(server.url + "/stop") as resp:
        assert resp.status == 405
    assert not engine.stopped.is_set()
    async with client.post(server.url + "/stop") as resp:
        assert (resp.status, await resp.text()) == (200, "")
    await asyncio.wait_for(engine.stopped.wait(), 5)


async def test_metrics_endpoint(admin: Any, client: aiohttp.ClientSession) -> None:
    engine, server = admin
    h = engine.worker.handler("srv0", "static_response")
    h.start()
    h.finish("GET", 200, 0.004, 80, 2)
    engine.worker.upstream_health("127.0.0.1:9001").set(1)
    async with client.get(server.url + "/config/") as resp:
        assert resp.status == 200
    async with client.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await resp.text()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    labels = (("handler", "static_response"), ("server", "srv0"))
    assert values[("caddy_http_requests_total", labels)] == 1
    assert values[("caddy_http_requests_in_flight", labels)] == 0
    status = (("code", "200"), ("handler", "static_response"), ("method", "GET"))
    assert values[("caddy_http_request_duration_seconds_count", (*status, ("server", "srv0")))] == 1
    assert values[("caddy_reverse_proxy_upstreams_healthy", (("upstream", "127.0.0.1:9001"),))]
    assert values[("caddy_config_last_reload_successful", ())] == 1
    assert values[("caddy_config_last_reload_success_timestamp_seconds", ())] == 1700000000.0
    admin_labels = (("code", "200"), ("handler", "admin"), ("method", "GET"), ("path", "/config/"))
    assert values[("caddy_admin_http_requests_total", admin_labels)] == 1


async def test_upstreams_and_unknown_paths(admin: Any, client: aiohttp.ClientSession) -> None:
    _, server = admin
    async with client.get(server.url + "/reverse_proxy/upstreams") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert await read(resp) == [
            {"address": "127.0.0.1:9001", "fails": 0, "num_requests": 3},
            {"address": "127.0.0.1:9002", "fails": 2, "num_requests": 0},
        ]
    async with client.post(server.url + "/reverse_proxy/upstreams") as resp:
        assert resp.status == 405
    async with client.get(server.url + "/nothing/here") as resp:
        assert resp.status == 404


class BrokenEngine(FakeEngine):
    async def upstreams(self) -> list[dict[str, Any]]:
        raise RuntimeError("pool registry gone")


async def test_engine_failure_is_a_json_500(client: aiohttp.ClientSession) -> None:
    engine = BrokenEngine(make_config())
    server = await start_admin_server(engine, ADMIN_LOCAL, persist=False)
    try:
        async with client.get(server.url + "/reverse_proxy/upstreams") as resp:
            assert (resp.status, await read(resp)) == (500, {"error": "pool registry gone"})
    finally:
        await server.close()


# --- the listener follows the admin config ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_admin_listener_follows_loaded_config(
    admin: Any, client: aiohttp.ClientSession
) -> None:
    engine, server = admin
    old_url = server.url
    new_port = _free_port()
    new = make_config(admin={"listen": f"127.0.0.1:{new_port}"})
    async with client.post(old_url + "/load", json=new) as resp:
        assert resp.status == 200
    new_url = f"http://127.0.0.1:{new_port}"
    for _ in range(100):  # the switch happens just after the answer; bounded wait
        if server.port == new_port:
            break
        await asyncio.sleep(0.05)
    assert server.port == new_port
    async with client.get(new_url + "/config/admin") as resp:
        assert await read(resp) == {"listen": f"127.0.0.1:{new_port}"}
    for _ in range(100):
        try:
            async with client.get(old_url + "/config/"):
                pass
        except aiohttp.ClientConnectionError:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("old admin listener still answers")
    # `admin off` (disabled) closes it after answering.
    async with client.post(new_url + "/load", json=make_config(admin={"disabled": True})) as r:
        assert r.status == 200
    for _ in range(100):
        if not server.serving:
            break
        await asyncio.sleep(0.05)
    assert not server.serving
    assert engine.config["admin"] == {"disabled": True}


async def test_disabled_admin_does_not_listen_and_persist_can_be_off(xdg: Path) -> None:
    engine = FakeEngine(make_config(admin={"disabled": True}))
    server = await start_admin_server(engine, {"disabled": True})
    assert not server.serving and server.sockets == []
    await server.update({"listen": "127.0.0.1:0", "config": {"persist": False}})
    assert server.serving
    try:
        async with aiohttp.ClientSession() as session:
            cfg = make_config(admin={"listen": "127.0.0.1:0", "config": {"persist": False}})
            async with session.post(server.url + "/load", json=cfg) as resp:
                assert resp.status == 200
        assert not xdg.exists()
    finally:
        await server.close()
    assert not server.serving


async def test_unix_socket_listener(tmp_path: Path) -> None:
    engine = FakeEngine(make_config())
    path = tmp_path / "admin.sock"
    server = await start_admin_server(engine, {"listen": f"unix/{path}"}, persist=False)
    try:
        connector = aiohttp.UnixConnector(path=str(path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://anything/config/apps/http/servers/srv0/listen") as resp,
        ):
            # No Host check on unix sockets (as in Caddy): file permissions guard them.
            assert (resp.status, await read(resp)) == (200, [":8080"])
    finally:
        await server.close()
    assert not path.exists()


async def test_build_admin_app_with_an_aiohttp_runner(client: aiohttp.ClientSession) -> None:
    from aiohttp import web

    engine = FakeEngine(make_config())
    port = _free_port()
    app = build_admin_app(engine, listen=f"localhost:{port}", enforce_origin=False, origins=None)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with client.get(f"http://127.0.0.1:{port}/config/admin/listen") as resp:
            assert (resp.status, await read(resp)) == (200, "127.0.0.1:0")
    finally:
        await runner.cleanup()


# The pure parts (config paths, origins, autosave) are tested in tests/unit/test_admin_pure.py.
