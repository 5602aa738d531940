"""`pyproxy run`: command-line glue.

Arguments, the env file and the worker count are handled here; the lifecycle — load and
validate, fork the workers, reload (admin API, SIGUSR1, `--watch`), graceful stop — is
proxy.supervisor's, and serving with zero-downtime config switches is proxy.worker's. `load`
is kept for callers that want the model of a config file without running it.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from collections.abc import Callable
from typing import Any

from config.errors import ConfigError
from config.model import Config

log = logging.getLogger("pyproxy")


RUN_EPILOG = """\
signals:
  SIGINT, SIGTERM  stop gracefully: wait shutdown_delay, stop accepting, let requests in
                   flight finish within grace_period; a second one forces the exit
  SIGUSR1          reload the config file (also: pyproxy reload, POST /load, --watch)
  SIGQUIT          exit at once
  SIGHUP           ignored (like Caddy)

exit codes:
  0  stopped normally        2  forced exit (second signal, SIGQUIT)
  1  failed to start         3  a worker failed while stopping
"""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = RUN_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", "-c", default=None, help="config file (default ./Caddyfile)")
    parser.add_argument("--adapter", "-a", default=None, help="caddyfile or json (by file name)")
    parser.add_argument(
        "--workers",
        "-w",
        type=int,
        default=0,
        help="worker processes sharing the listeners via SO_REUSEPORT (default: one per core)",
    )
    parser.add_argument(
        "--envfile", default=None, help="KEY=VALUE file loaded into the environment"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument("--watch", action="store_true", help="reload when the config file changes")


def _usable_cores() -> int:
    """Cores this process may run on (honours taskset/cpusets, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_envfile(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[7:].lstrip()
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"{path}: malformed line (expected KEY=VALUE): {raw.strip()}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            os.environ[key.strip()] = value


def load(args: argparse.Namespace) -> Config:
    from config.model import load_model
    from config.source import load_config
    from proxy.certs import prepare_certificates

    global cert_setup
    config, warnings = load_config(args.config, args.adapter)
    for w in warnings:
        print(f"WARN {getattr(w, 'message', w)}", file=sys.stderr)
    # Automatic HTTPS before the model: its redirect servers and TLS policies are served too.
    # Manual certificate files are read here, so a bad one is a startup error naming the file.
    cert_setup = prepare_certificates(config)
    return load_model(cert_setup.config)


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from proxy import supervisor

    try:
        if args.envfile:
            load_envfile(args.envfile)
    except (ConfigError, OSError) as exc:
        print(f"Error: loading config: {exc}", file=sys.stderr)
        return 1
    workers = args.workers if args.workers > 0 else _usable_cores()
    # The lifecycle (config loading, workers, reloads, admin API, signals) lives in
    # proxy.supervisor; serving and config switching in proxy.worker.
    return supervisor.run(args, workers)


# Seam for TLS termination: given a server's name and model, return the listener SSL context
# (None for plain HTTP). The certificate side (proxy.tls, automatic HTTPS) plugs in here.
TLSProvider = Callable[[str, Any], "ssl.SSLContext | None"]
tls_provider: TLSProvider | None = None
# What `load` decided about certificates (proxy.certs.CertSetup); each worker builds its own
# certificate runtime from it (workers share storage like a cluster of Caddy instances).
cert_setup: Any = None
