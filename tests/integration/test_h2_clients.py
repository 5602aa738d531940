"""HTTP/2 by default, seen by real clients (issue #13): curl, h2load, headless Chromium, and a
WebSocket client, against `pyproxy run` on loopback with an HTTP/1.1 origin behind it.

The default config leaves the server's `protocols` unset, which serves h1 and h2 (Caddy's
default h1 h2 h3 without h3): TLS listeners offer ["h2", "http/1.1"] by ALPN; h2c (prior
knowledge on plain HTTP) stays opt-in, as in Caddy. Each tool skips cleanly when absent.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import test_h2_server
from conftest import ProxyProcess, ThreadedOrigin
from enginekit import free_port, payload
from test_h2_server import TIMEOUT_S, H2Client

cert_pair = test_h2_server.cert_pair
h2_proxy = test_h2_server.h2_proxy
h2c_proxy = test_h2_server.h2c_proxy

TOOL_TIMEOUT_S = 120.0  # the bound on every external client run
SUBRESOURCES = 30  # images, scripts and stylesheets on the Chromium test page


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture
def default_proxy(h2_proxy: Callable[..., ProxyProcess]) -> Callable[[str], ProxyProcess]:
    """A TLS site (localhost) whose server leaves `protocols` unset: the default config."""

    def start(body: str) -> ProxyProcess:
        return h2_proxy(body, protocols="")

    return start


def proxied_to(origin_port: int) -> str:
    return f"\treverse_proxy 127.0.0.1:{origin_port}\n"


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("curl"), "-sS", "--max-time", "30", *args],
        capture_output=True,
        text=True,
        encoding="latin-1",  # bodies are bytes; latin-1 maps each to one character
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )


def curl_version_and_body(port: int, *flags: str, path: str = "/bytes/100") -> tuple[str, str]:
    """What curl negotiated (`%{http_version}`) and the body, for https://localhost:port."""
    result = curl(
        "-k",
        "--resolve",
        f"localhost:{port}:127.0.0.1",
        *flags,
        "-w",
        "\n%{http_version}",
        f"https://localhost:{port}{path}",
    )
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition("\n")
    return version, body


# ---- curl --------------------------------------------------------------------------------------


def test_curl_gets_http2_over_tls_from_the_default_config(
    default_proxy: Callable[[str], ProxyProcess], origin: ThreadedOrigin
) -> None:
    proxy = default_proxy(proxied_to(origin.port))
    version, body = curl_version_and_body(proxy.port, "--http2", path="/headers")
    assert version == "2"
    sent = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
    assert sent["x-forwarded-proto"] == "https"  # the origin got the request, over HTTP/1.1
    assert "Traceback" not in proxy.log


def test_curl_http11_still_gets_http11_from_the_default_config(
    default_proxy: Callable[[str], ProxyProcess], origin: ThreadedOrigin
) -> None:
    proxy = default_proxy(proxied_to(origin.port))
    version, body = curl_version_and_body(proxy.port, "--http1.1", path="/headers")
    assert version == "1.1"
    assert json.loads(body)["path"] == "/headers"


def test_explicit_h1_serves_http11_only(
    h2_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    """`protocols h1` is the file saying HTTP/1.1 only: h2 is not offered by ALPN."""
    proxy = h2_proxy(proxied_to(origin.port), protocols="h1")
    version, body = curl_version_and_body(proxy.port, "--http2")
    assert version == "1.1" and body == payload(100).decode("latin-1")
    client = H2Client(proxy.port)
    client.close()
    assert client.alpn == "http/1.1"


def test_curl_prior_knowledge_on_an_h2c_server(
    h2c_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    proxy = h2c_proxy(proxied_to(origin.port))
    result = curl(
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version}",
        f"http://127.0.0.1:{proxy.port}/bytes/5000",
    )
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition("\n")
    assert version == "2" and body == payload(5000).decode("latin-1")


def test_h2c_stays_opt_in(h2c_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin) -> None:
    """A plain-HTTP server with `protocols` unset serves HTTP/1.1 only (Caddy: h2c only when
    listed): curl's prior-knowledge preface is not answered as HTTP/2."""
    proxy = h2c_proxy(proxied_to(origin.port), protocols="")
    result = curl("--http2-prior-knowledge", f"http://127.0.0.1:{proxy.port}/bytes/10")
    assert result.returncode != 0
    version = curl("-w", "%{http_version}", "-o", "/dev/null", f"http://127.0.0.1:{proxy.port}/")
    assert version.stdout == "1.1"


# ---- h2load ------------------------------------------------------------------------------------


H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def h2load(url: str, *args: str, timeout_s: float = TOOL_TIMEOUT_S) -> dict[str, int]:
    """Run h2load (bounded by -n and a wall-clock timeout); its report's counts by name."""
    result = subprocess.run(
        [need("h2load"), *args, url],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    requests = H2LOAD_REQUESTS.search(result.stdout)
    status = H2LOAD_STATUS.search(result.stdout)
    assert requests and status, result.stdout + result.stderr
    names = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    counts = dict(zip(names, map(int, requests.groups()), strict=True))
    counts.update(zip(("2xx", "3xx", "4xx", "5xx"), map(int, status.groups()), strict=True))
    counts["h2"] = int("Application protocol: h2" in result.stdout)
    return counts


def test_h2load_over_tls_from_the_default_config(
    default_proxy: Callable[[str], ProxyProcess], origin: ThreadedOrigin
) -> None:
    proxy = default_proxy(proxied_to(origin.port))
    report = h2load(
        f"https://localhost:{proxy.port}/bytes/1024", "-n", "2000", "-c", "10", "-m", "10"
    )
    assert report["h2"] == 1  # h2load refuses anything but h2 over TLS; this says it got it
    assert report["succeeded"] == 2000 and report["2xx"] == 2000
    assert report["failed"] == 0 and report["errored"] == 0 and report["timeout"] == 0
    assert "Traceback" not in proxy.log


def test_h2load_prior_knowledge_on_an_h2c_server(
    h2c_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    proxy = h2c_proxy(proxied_to(origin.port))
    # An http:// URL: h2load speaks HTTP/2 with prior knowledge (RFC 9113 §3.3).
    report = h2load(
        f"http://127.0.0.1:{proxy.port}/bytes/1024", "-n", "2000", "-c", "10", "-m", "10"
    )
    assert report["succeeded"] == 2000 and report["2xx"] == 2000
    assert report["failed"] == 0 and report["errored"] == 0


# ---- headless Chromium -------------------------------------------------------------------------


PAGE_SCRIPT = """
window.addEventListener("load", () => {
  const hop = (name, type) =>
    performance.getEntriesByType(type).map(e => [name || e.name, e.nextHopProtocol]);
  const entries = hop("navigation", "navigation").concat(hop("", "resource"));
  document.getElementById("out").textContent = JSON.stringify(entries);
});
"""


def page_html(n: int) -> bytes:
    """A page with n subresources (a third each images, scripts and stylesheets)."""
    parts = ['<!doctype html><html><head><meta charset="utf-8">']
    parts += [f'<link rel="stylesheet" href="/css/{i}.css">' for i in range(0, n, 3)]
    parts += [f'<script src="/js/{i}.js"></script>' for i in range(1, n, 3)]
    parts.append(f"<script>{PAGE_SCRIPT}</script></head><body>")
    parts += [f'<img src="/img/{i}.svg" width="8" height="8">' for i in range(2, n, 3)]
    parts.append('<pre id="out">not loaded</pre></body></html>')
    return "".join(parts).encode()


class PageOrigin:
    """An HTTP/1.1 keepalive origin (stdlib, threaded) serving the test page and its parts."""

    def __init__(self, subresources: int) -> None:
        page = page_html(subresources)
        svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>'

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                kinds = {
                    "/css/": ("text/css", b"body { margin: 0 }"),
                    "/js/": ("text/javascript", b"window.loaded = (window.loaded || 0) + 1;"),
                    "/img/": ("image/svg+xml", svg),
                }
                ctype, body = "text/html; charset=utf-8", page
                for prefix, answer in kinds.items():
                    if self.path.startswith(prefix):
                        ctype, body = answer
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def page_origin() -> Iterator[PageOrigin]:
    o = PageOrigin(SUBRESOURCES)
    yield o
    o.close()


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.skip("chromium is not installed")


def test_chromium_loads_a_page_and_its_subresources_over_h2(
    default_proxy: Callable[[str], ProxyProcess], page_origin: PageOrigin, tmp_path: Path
) -> None:
    browser = chromium_binary()
    proxy = default_proxy(proxied_to(page_origin.port))
    result = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--ignore-certificate-errors",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            # Loopback only: every name is 127.0.0.1 (and nothing else resolves).
            "--host-resolver-rules=MAP * 127.0.0.1",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--dump-dom",
            f"https://localhost:{proxy.port}/page.html",
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    found = re.search(r'<pre id="out">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    entries = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    names = [name for name, _ in entries]
    assert names[0] == "navigation"
    assert len(names) == 1 + SUBRESOURCES, names
    for kind in ("css", "js", "img"):
        assert sum(f"/{kind}/" in n for n in names) == SUBRESOURCES // 3, names
    assert {proto for _, proto in entries} == {"h2"}, entries
    assert "Traceback" not in proxy.log


# ---- WebSockets --------------------------------------------------------------------------------


def test_websocket_over_tls_with_http11_alpn_upgrades_with_the_default_config(
    default_proxy: Callable[[str], ProxyProcess], origin: ThreadedOrigin
) -> None:
    """Browsers open a WebSocket over HTTP/1.1 (ALPN ["http/1.1"]) when the server does not send
    SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 §3), which pyproxy does not: with HTTP/2 on,
    such a connection still gets HTTP/1.1 and its upgrade."""
    from websockets.sync.client import connect

    proxy = default_proxy(proxied_to(origin.port))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    with connect(
        f"wss://localhost:{proxy.port}/ws", ssl=ctx, open_timeout=TIMEOUT_S, close_timeout=5
    ) as ws:
        tls = ws.socket
        assert isinstance(tls, ssl.SSLSocket) and tls.selected_alpn_protocol() == "http/1.1"
        for i in range(3):
            ws.send(f"m{i}")
            assert ws.recv(timeout=TIMEOUT_S) == f"echo:m{i}"
    # And an h2 client on the same listener meanwhile gets h2.
    client = H2Client(proxy.port)
    try:
        answer = client.answer(client.request("GET", "/bytes/10"))
    finally:
        client.close()
    assert client.alpn == "h2" and answer.status == 200 and len(answer.body) == 10
