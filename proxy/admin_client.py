"""The CLI side of the admin API: `pyproxy reload`, `pyproxy stop` and `pyproxy environ`.

This module owns the verbs that talk to a running instance, worded and behaving like Caddy's
(cmd/commandfuncs.go): `reload` adapts the config locally and POSTs the JSON to `/load`; `stop`
POSTs to `/stop`. The admin address comes from `--address`, else from the config's
`admin.listen`, else the default (`localhost:2019`, or `$CADDY_ADMIN`). Requests carry the
`Origin` header Caddy's CLI sends, so they pass the admin API's origin checks.

Exit codes: 0 success; 1 any failure (config error, no instance reachable, error answer) —
Caddy's ExitCodeFailedStartup. The stdlib HTTP client keeps the CLI start-up fast.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from config.envfile import load_envfile
from config.errors import ConfigError
from proxy import __version__

EXIT_OK = 0
EXIT_FAILED = 1
# A load can take as long as provisioning plus the old config's graceful stop; the CLI waits,
# like Caddy's (which has no timeout at all), but not forever.
REQUEST_TIMEOUT_S = 600.0
MAX_ERROR_BODY_BYTES = 2 * 1024 * 1024


class AdminRequestError(Exception):
    pass


# --- argument registration ----------------------------------------------------------------


def add_reload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="config file (default ./Caddyfile)")
    parser.add_argument("--adapter", "-a", default=None, help="config adapter (by file name)")
    parser.add_argument(
        "--address", default=None, help="admin API address, if different from the config's"
    )
    parser.add_argument(
        "--force", "-f", action="store_true", help="reload even if the config is unchanged"
    )


def add_stop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=None, help="config file to read the admin address from"
    )
    parser.add_argument("--adapter", "-a", default=None, help="config adapter (with --config)")
    parser.add_argument("--address", default=None, help="admin API address, if not the default")


def add_environ_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--envfile",
        action="append",
        default=[],
        help="KEY=VALUE file(s) loaded into the environment first",
    )


# --- commands -------------------------------------------------------------------------------


def reload_command(args: argparse.Namespace) -> int:
    from config.source import DEFAULT_CONFIG_FILE, guess_adapter, load_config

    config_file = args.config
    if not config_file:
        if not os.path.exists(DEFAULT_CONFIG_FILE):
            return _fail("no config file to load")
        config_file = DEFAULT_CONFIG_FILE
    adapter = args.adapter or guess_adapter(config_file)
    try:
        config, warnings = load_config(config_file, adapter)
    except ConfigError as exc:
        where = f"{exc.location}: " if exc.location and exc.location not in str(exc) else ""
        return _fail(f"adapting config using {adapter}: {where}{exc}")
    _print_warnings(warnings)
    address = determine_admin_address(args.address, config)
    headers = {
        # Lets the instance know where its new config came from (Caddy sends these too).
        "Caddy-Config-Source-File": config_file,
        "Caddy-Config-Source-Adapter": adapter,
    }
    if args.force:
        headers["Cache-Control"] = "must-revalidate"
    body = json.dumps(config, separators=(",", ":")).encode("utf-8")
    try:
        admin_request(address, "POST", "/load", headers, body)
    except AdminRequestError as exc:
        return _fail(f"sending configuration to instance: {exc}")
    return EXIT_OK


def stop_command(args: argparse.Namespace) -> int:
    config: Mapping[str, Any] | None = None
    if not args.address and args.config:
        from config.source import load_config

        try:
            config, _ = load_config(args.config, args.adapter)
        except ConfigError as exc:
            return _fail(f"couldn't determine admin API address: {exc}")
    address = determine_admin_address(args.address, config)
    try:
        admin_request(address, "POST", "/stop", {}, None)
    except AdminRequestError as exc:
        print(f"WARN failed using API to stop instance: {exc}", file=sys.stderr)
        return _fail(str(exc))
    return EXIT_OK


def environ_command(args: argparse.Namespace) -> int:
    for path in getattr(args, "envfile", None) or []:
        try:
            load_envfile(path)
        except ConfigError as exc:
            return _fail(f"loading environment file {path}: {exc}")
    sys.stdout.write(environment_text())
    sys.stdout.flush()
    return EXIT_OK


# --- helpers ------------------------------------------------------------------------------


def determine_admin_address(address: str | None, config: Mapping[str, Any] | None) -> str:
    """Caddy's DetermineAdminAPIAddress: the flag, else the config's `admin.listen`, else the
    default."""
    if address:
        return address
    if config:
        admin = config.get("admin")
        if isinstance(admin, Mapping) and admin.get("listen"):
            return str(admin["listen"])
    from proxy.admin.origins import default_admin_listen

    return default_admin_listen()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        # The host only feeds the Host header; Caddy's CLI uses this bogus one for sockets.
        super().__init__("127.0.0.1", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _LocalHTTPConnection(http.client.HTTPConnection):
    """For wildcard listen addresses (`:2019`, `0.0.0.0:2019`): dial this machine, as Go does
    for an empty or unspecified host, while the Host header keeps the configured form."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._dial_port = port

    def connect(self) -> None:
        last: OSError | None = None
        for host in ("127.0.0.1", "::1"):
            try:
                self.sock = socket.create_connection((host, self._dial_port), self.timeout)
                return
            except OSError as exc:
                last = exc
        assert last is not None
        raise last


def admin_request(
    address: str,
    method: str,
    uri: str,
    headers: Mapping[str, str],
    body: bytes | None,
    timeout: float = REQUEST_TIMEOUT_S,
) -> tuple[int, bytes]:
    """Send one request to the admin API at `address`; return (status, body) for a 2xx/3xx
    answer, raise AdminRequestError with Caddy's wording otherwise."""
    from proxy.admin.origins import parse_admin_listen

    try:
        addr = parse_admin_listen(address)
    except ConfigError as exc:
        raise AdminRequestError(f"invalid admin address {address}: {exc}") from None
    conn: http.client.HTTPConnection
    all_headers: dict[str, str] = {}
    if addr.is_unix:
        conn = _UnixHTTPConnection(addr.host, timeout)
    else:
        # Caddy's CLI sends Origin: http://<listen host:port> so the origin check passes.
        all_headers["Origin"] = f"http://{addr.join_host_port()}"
        if addr.is_wildcard():
            conn = _LocalHTTPConnection(addr.host, addr.port, timeout)
        else:
            conn = http.client.HTTPConnection(addr.host, addr.port, timeout=timeout)
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers)
    try:
        try:
            conn.request(method, uri, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read(MAX_ERROR_BODY_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            raise AdminRequestError(f"performing request: {_describe(exc)}") from None
    finally:
        conn.close()
    if resp.status >= 400:
        text = data.decode("utf-8", "replace").rstrip("\n")
        raise AdminRequestError(f"caddy responded with error: HTTP {resp.status}: {text}")
    return resp.status, data


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running, with the admin API on?)"
    return str(exc) or type(exc).__name__


_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def environment_text(environ: Mapping[str, str] | None = None) -> str:
    """What `caddy environ` prints, with the Python runtime in place of Go's."""
    from acme_client.storage import default_storage_root
    from proxy.admin.autosave import app_config_dir, autosave_path

    env = os.environ if environ is None else environ
    try:
        cwd = os.getcwd()
    except OSError as exc:
        cwd = f"<error: {exc}>"
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable_cpus = os.cpu_count() or 1
    machine = platform.machine()
    lines = [
        f"caddy.HomeDir={env.get('HOME', '')}",
        f"caddy.AppDataDir={default_storage_root(env)}",
        f"caddy.AppConfigDir={app_config_dir(env)}",
        f"caddy.ConfigAutosavePath={autosave_path(env)}",
        f"caddy.Version=pyproxy v{__version__}",
        f"runtime.GOOS={sys.platform.rstrip('0123456789')}",
        f"runtime.GOARCH={_GOARCH.get(machine.lower(), machine)}",
        f"runtime.Compiler={platform.python_implementation().lower()}",
        f"runtime.NumCPU={os.cpu_count() or 1}",
        f"runtime.GOMAXPROCS={usable_cpus}",
        f"runtime.Version=python{platform.python_version()}",
        f"os.Getwd={cwd}",
        "",
        *(f"{k}={v}" for k, v in env.items()),
    ]
    return "\n".join(lines) + "\n"


def _print_warnings(warnings: Sequence[object]) -> None:
    for w in warnings:
        file, line = getattr(w, "file", ""), getattr(w, "line", 0)
        where = f"{file}:{line}: " if file else ""
        print(f"WARN {where}{getattr(w, 'message', w)}", file=sys.stderr)


def _fail(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return EXIT_FAILED
