"""The container image, built and run for real without a Docker engine (DESIGN.md §7).

`container_build.sh` makes a Debian bookworm base with debootstrap (cached for the day) and builds
the Dockerfile with `buildah bud --isolation=chroot`; `buildah run --isolation=chroot` then runs
commands in it. Chroot isolation shares the host's network and process table, so the image's
default command can serve on loopback, be reached from here and be stopped by pid.

Those tests are skipped unless running as root with buildah and debootstrap installed; the
`caddy` command's mapping onto pyproxy is also checked here on the host, against a stand-in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "container_build.sh"
BASE_IMAGE = "localhost/bookworm-python"
# A tag per run, so concurrent runs on one machine do not remove each other's image.
IMAGE = f"localhost/pyproxy-test:{os.getpid()}"
BUILD_TIMEOUT = 1800.0

CADDY_WRAPPER = HERE.parents[1] / "docker" / "caddy"

F = TypeVar("F", bound=Callable[..., None])


def in_container(test: F) -> F:
    """Marks a test that builds and runs the image: slow, and only where buildah can."""
    marks = (
        pytest.mark.slow,
        pytest.mark.skipif(
            shutil.which("buildah") is None or shutil.which("debootstrap") is None,
            reason="needs buildah and debootstrap",
        ),
        pytest.mark.skipif(os.geteuid() != 0, reason="buildah --isolation=chroot needs root"),
    )
    for mark in marks:
        test = mark(test)
    return test


def buildah(
    *args: str, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"buildah {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def run_in(
    ctr: str, *cmd: str, workdir: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    opts = ["--isolation=chroot"]
    if workdir:
        opts += ["--workingdir", workdir]
    for key, value in (env or {}).items():
        opts += ["--env", f"{key}={value}"]
    return buildah("run", *opts, ctr, "--", *cmd, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    started = time.monotonic()
    proc = subprocess.run(
        [str(BUILD_SCRIPT), "image", IMAGE],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"container_build.sh exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    print(f"container image built in {time.monotonic() - started:.0f}s", file=sys.stderr)
    try:
        yield IMAGE
    finally:
        # The base image stays: it is the day's cache (see container_build.sh).
        buildah("rmi", IMAGE, check=False)


@pytest.fixture
def container(image: str) -> Iterator[str]:
    name = f"pyproxy-test-{uuid.uuid4().hex[:12]}"
    buildah("from", "--name", name, image)
    try:
        yield name
    finally:
        buildah("rm", name, check=False)


def image_config(image: str) -> dict[str, Any]:
    data = json.loads(buildah("inspect", "--type", "image", image).stdout)
    config: dict[str, Any] = data["Docker"]["config"]
    return config


class Origin:
    """An HTTP origin on loopback that says who it is and remembers what it was asked."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                origin.paths.append(self.path)
                body = f"origin saw {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def parent_pid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name in parentheses may hold spaces; the fields after it do not.
    return int(stat.rsplit(")", 1)[1].split()[1])


class Stopped:
    """How a served command ended: its exit code, and pids that had to be killed."""

    exit_code: int | None = None
    killed: list[int]

    def __init__(self) -> None:
        self.killed = []


@contextmanager
def serving(ctr: str, command: list[str], log: Path, ready_url: str) -> Iterator[Stopped]:
    """Run `command` in the container until the block ends, then stop it like `docker stop`.

    SIGTERM goes to the server itself (the container's PID 1 in Docker), not to `buildah run`,
    which would kill it and orphan its workers. Anything left afterwards is killed by pid.
    """
    stopped = Stopped()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["buildah", "run", "--isolation=chroot", ctr, "--", *command],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    tree: dict[int, list[str]] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                http_get(ready_url, timeout=2)
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready in 60s:\n{log.read_text()[-4000:]}")
                time.sleep(0.2)
        yield stopped
    finally:
        tree = {pid: cmdline(pid) for pid in descendants(proc.pid)}
        # The interpreter running pyproxy whose parent is not one: the supervisor, which tells
        # its workers. (buildah's own helpers carry the command in their argv too.)
        servers = {
            pid
            for pid, argv in tree.items()
            if len(argv) > 1
            and Path(argv[0]).name.startswith("python")
            and Path(argv[1]).name == "pyproxy"
        }
        top = [pid for pid in servers if parent_pid(pid) not in servers]
        if top:
            os.kill(top[0], signal.SIGTERM)
        else:
            proc.terminate()
        try:
            stopped.exit_code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for pid, argv in tree.items():
            if argv and cmdline(pid) == argv:
                os.kill(pid, signal.SIGKILL)
                stopped.killed.append(pid)


@in_container
def test_image_config_matches_the_caddy_image(image: str) -> None:
    config = image_config(image)
    assert config["Cmd"] == [
        "pyproxy",
        "run",
        "--config",
        "/etc/caddy/Caddyfile",
        "--adapter",
        "caddyfile",
    ]
    assert not config.get("Entrypoint")
    assert set(config["ExposedPorts"]) == {"80/tcp", "443/tcp"}
    assert set(config["Volumes"]) == {"/data", "/config"}
    assert {"XDG_DATA_HOME=/data", "XDG_CONFIG_HOME=/config"} <= set(config["Env"])
    assert config["Healthcheck"]["Test"] == ["CMD", "pyproxy-healthcheck"]
    # Root, like the caddy image, so volumes carried over from it stay readable.
    assert config.get("User", "") in ("", "root", "0")


@in_container
def test_caddy_validate_default_caddyfile(container: str) -> None:
    proc = run_in(container, "caddy", "validate", "--config", "/etc/caddy/Caddyfile")
    assert proc.returncode == 0, proc.stderr
    assert "Valid configuration" in proc.stdout


@in_container
def test_image_runs_the_compiled_request_path(container: str) -> None:
    # The build stage compiles the hot path with mypyc (proxy/native.py); the image carries the
    # result but no compiler. (The Dockerfile falls back to interpreted if a build fails; on
    # this test's base the build must succeed.)
    proc = run_in(container, "pyproxy", "version")
    assert proc.returncode == 0, proc.stderr
    assert "native build: on" in proc.stdout, proc.stdout
    gcc = run_in(container, "sh", "-c", "command -v gcc || echo none")
    assert gcc.stdout.strip() == "none"


@in_container
def test_caddy_command_maps_verbs(container: str) -> None:
    version = run_in(container, "caddy", "version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("v2.6.2 pyproxy-")  # Caddy-style: `v2.x.y <build>`

    adapt = run_in(container, "caddy", "adapt", "--config", "/etc/caddy/Caddyfile")
    assert adapt.returncode == 0, adapt.stderr
    assert json.loads(adapt.stdout)["apps"]["http"]["servers"]["srv0"]["listen"] == [":80"]

    fmt = run_in(container, "caddy", "fmt", "Caddyfile", workdir="/etc/caddy")
    assert fmt.returncode == 0, fmt.stderr

    environ = run_in(container, "caddy", "environ")
    assert environ.returncode == 0, environ.stderr
    assert "caddy.AppDataDir=/data/caddy" in environ.stdout.splitlines()


def proxy_caddyfile(admin_port: int, port: int, site_body: str) -> str:
    # `bind` keeps the listener on loopback: chroot isolation shares the host's network.
    return (
        f"{{\n\tadmin 127.0.0.1:{admin_port}\n}}\n\n"
        f"http://127.0.0.1:{port} {{\n\tbind 127.0.0.1\n\t{site_body}\n}}\n"
    )


@in_container
# The default command as it is, then pinned to one worker: one process per core is the default,
# and a one-core host runs the single-process path, whose SIGTERM handling differs.
@pytest.mark.parametrize("extra_args", [[], ["--workers", "1"]], ids=["default", "one-worker"])
def test_entrypoint_proxies_to_loopback_origin(
    image: str, container: str, extra_args: list[str]
) -> None:
    admin_port, port = free_port(), free_port()
    with Origin() as origin, tempfile.TemporaryDirectory() as tmp:
        caddyfile = Path(tmp, "Caddyfile")
        caddyfile.write_text(
            proxy_caddyfile(admin_port, port, f"reverse_proxy 127.0.0.1:{origin.port}")
        )
        buildah("copy", container, str(caddyfile), "/etc/caddy/Caddyfile")
        url = f"http://127.0.0.1:{port}/hello?x=1"
        log = Path(tmp, "server.log")
        command = [*image_config(image)["Cmd"], *extra_args]
        with serving(container, command, log, url) as stopped:
            status, body = http_get(url)
            assert (status, body) == (200, "origin saw /hello?x=1\n")
            assert "/hello?x=1" in origin.paths

            health = run_in(
                container, "pyproxy-healthcheck", env={"CADDY_ADMIN": f"127.0.0.1:{admin_port}"}
            )
            assert health.returncode == 0, health.stderr
        # SIGTERM to the server (what `docker stop` sends) ends it cleanly, workers included.
        assert (stopped.exit_code, stopped.killed) == (0, []), log.read_text()[-4000:]
        with pytest.raises(OSError):
            http_get(url, timeout=2)


@in_container
def test_caddy_reload_in_etc_caddy_like_the_ansible_handler(image: str, container: str) -> None:
    if run_in(container, "pyproxy", "reload", "--help").returncode != 0:
        pytest.skip("pyproxy reload is not implemented yet")
    admin_port, port = free_port(), free_port()
    with Origin() as origin, tempfile.TemporaryDirectory() as tmp:
        caddyfile = Path(tmp, "Caddyfile")
        caddyfile.write_text(
            proxy_caddyfile(admin_port, port, f"reverse_proxy 127.0.0.1:{origin.port}")
        )
        buildah("copy", container, str(caddyfile), "/etc/caddy/Caddyfile")
        url = f"http://127.0.0.1:{port}/"
        with serving(container, image_config(image)["Cmd"], Path(tmp, "server.log"), url):
            assert http_get(url) == (200, "origin saw /\n")
            try:
                http_get(f"http://127.0.0.1:{admin_port}/config/")
            except urllib.error.HTTPError:
                pass
            except OSError:
                pytest.skip("pyproxy run does not serve the admin API yet")
            caddyfile.write_text(proxy_caddyfile(admin_port, port, 'respond "reloaded"'))
            buildah("copy", container, str(caddyfile), "/etc/caddy/Caddyfile")
            # docker exec -w /etc/caddy $PS caddy reload
            reload = run_in(container, "caddy", "reload", workdir="/etc/caddy")
            assert reload.returncode == 0, reload.stdout + reload.stderr
            assert http_get(url) == (200, "reloaded")


# The `caddy` command's own logic, on the host with a stand-in for pyproxy that prints its argv.


@pytest.fixture
def fake_pyproxy(tmp_path: Path) -> Path:
    fake = tmp_path / "pyproxy"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        "set -euo pipefail\n"
        "if [[ ${2:-} == --help && $1 != reload ]]; then exit 2; fi\n"
        'if [[ $1 == version ]]; then echo "pyproxy v0"; exit 0; fi\n'
        'echo "argv: $*"\n'
    )
    fake.chmod(0o755)
    return fake


def caddy(fake: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYPROXY": str(fake), "XDG_DATA_HOME": "/data", "XDG_CONFIG_HOME": "/c"}
    return subprocess.run(
        [str(CADDY_WRAPPER), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=30,
        check=False,
    )


def test_caddy_reload_without_config_uses_caddyfile_in_working_dir(
    fake_pyproxy: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert caddy(fake_pyproxy, "reload", cwd=empty).stdout == "argv: reload\n"
    (tmp_path / "Caddyfile").write_text(":80\n")
    got = caddy(fake_pyproxy, "reload", "--force", cwd=tmp_path)
    assert got.stdout == "argv: reload --config Caddyfile --force\n"
    for given in (["--config", "x.json"], ["-c", "x.json"], ["--config=x.json"]):
        got = caddy(fake_pyproxy, "reload", *given, "--address", "h:1", cwd=tmp_path)
        assert got.stdout == f"argv: reload {' '.join(given)} --address h:1\n"


def test_caddy_run_handles_caddy_only_flags(fake_pyproxy: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "caddy.pid"
    got = caddy(
        fake_pyproxy,
        "run",
        "--environ",
        "--resume",
        "--pidfile",
        str(pidfile),
        "--config",
        "/etc/caddy/Caddyfile",
        "--adapter",
        "caddyfile",
        cwd=tmp_path,
    )
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert "caddy.AppDataDir=/data/caddy" in lines
    assert "caddy.AppConfigDir=/c/caddy" in lines
    assert lines[-1] == "argv: run --config /etc/caddy/Caddyfile --adapter caddyfile"
    assert pidfile.read_text().strip().isdigit()
    assert "--resume" in got.stderr


def test_caddy_passes_other_verbs_through(fake_pyproxy: Path, tmp_path: Path) -> None:
    for args in (
        ["validate", "--config", "/etc/caddy/Caddyfile"],
        ["adapt", "--pretty", "--validate"],
        ["fmt", "--overwrite", "Caddyfile"],
        ["stop", "--address", "localhost:2019"],
    ):
        assert caddy(fake_pyproxy, *args, cwd=tmp_path).stdout == f"argv: {' '.join(args)}\n"
    assert caddy(fake_pyproxy, "version", cwd=tmp_path).stdout == "v2.6.2 pyproxy-0\n"
    usage = caddy(fake_pyproxy, cwd=tmp_path)
    assert usage.returncode == 0
    assert "reload" in usage.stdout
