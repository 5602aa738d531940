"""`pyproxy reverse-proxy --from :PORT --to ORIGIN` served for real in front of a real origin.

Like Caddy's, the quick proxy listens on ":PORT" (every interface). To keep every test server on
loopback, the whole scene (origin, proxy, client) runs in a fresh network namespace
(`unshare -rn`) whose only interface is lo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

SCENE_TIMEOUT_S = 90

SCENE = r"""
import http.client, http.server, json, signal, socket, subprocess, sys, threading, time

seen = []

class Origin(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b"from origin"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
threading.Thread(target=origin.serve_forever, daemon=True).start()
origin_port = origin.server_address[1]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
proxy = subprocess.Popen(
    [sys.executable, "-m", "proxy", "reverse-proxy", "--from", f":{port}",
     "--to", f"127.0.0.1:{origin_port}", "--header-up", "X-Up: yes",
     "--header-down", "x-down: yes", "--change-host-header"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
)
deadline = time.monotonic() + 60
while True:
    if proxy.poll() is not None:
        print(json.dumps({"exited": proxy.returncode, "stderr": proxy.stderr.read().decode()}))
        sys.exit(0)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
conn.request("GET", "/x", headers={"Host": "client.example"})
resp = conn.getresponse()
result = {"status": resp.status, "body": resp.read().decode(),
          "x_down": resp.getheader("X-Down"), "origin_port": origin_port, "seen": seen}
conn.close()
proxy.send_signal(signal.SIGTERM)
result["exit"] = proxy.wait(30)
result["stderr"] = proxy.stderr.read().decode()
print(json.dumps(result))
"""


def test_reverse_proxy_quick_mode_serves_plain_http_in_front_of_an_origin() -> None:
    if not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs unshare and ip for a loopback-only network namespace")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYPROXY_WORKERS": "1"}
    proc = subprocess.run(
        [
            "unshare",
            "-rn",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" -c "$1"',
            sys.executable,
            SCENE,
        ],
        capture_output=True,
        env=env,
        timeout=SCENE_TIMEOUT_S,
        cwd=ROOT,
    )
    if proc.returncode != 0 and b"unshare" in proc.stderr:
        pytest.skip(f"no network namespace here: {proc.stderr.decode().strip()}")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert "exited" not in result, result
    assert (result["status"], result["body"], result["x_down"]) == (200, "from origin", "yes")
    [upstream_request] = result["seen"]
    assert upstream_request["x-up"] == "yes"
    # --change-host-header: the upstream's host:port instead of the client's Host.
    assert upstream_request["host"] == f"127.0.0.1:{result['origin_port']}"
    assert result["exit"] == 0, result["stderr"]
    assert "reverse-proxy: from http://:" in result["stderr"]
    assert f"to 127.0.0.1:{result['origin_port']}" in result["stderr"]
