"""`pyproxy run`: command-line glue.

Arguments, the env file and the worker count are handled here; the lifecycle — load and
validate, fork the workers, reload (admin API, SIGUSR1, `--watch`), graceful stop — is
proxy.supervisor's, and serving with zero-downtime config switches is proxy.worker's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from config.envfile import load_envfile
from config.errors import ConfigError

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
        help="worker processes sharing the listeners via SO_REUSEPORT "
        "(default: $PYPROXY_WORKERS, else one per core)",
    )
    parser.add_argument(
        "--envfile", default=None, help="KEY=VALUE file loaded into the environment"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument("--watch", action="store_true", help="reload when the config file changes")
    parser.add_argument(
        "--environ", action="store_true", help="print the environment before starting"
    )
    parser.add_argument("--pidfile", default=None, help="write the process id to this file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="use the config last pushed through the admin API (autosave.json), if any",
    )


def _usable_cores() -> int:
    """Cores this process may run on (honours taskset/cpusets, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def configure_logging() -> None:
    """The process log of `run`: the supervisor and every worker, also a respawned one that
    starts as a new interpreter (proxy.worker.spawned_worker_main)."""
    from proxy.logs import own_log_handler

    # Caddy's default logger: JSON lines unless stderr is a terminal (proxy/logs.py).
    logging.basicConfig(level=logging.INFO, handlers=[own_log_handler(sys.stderr)])


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging()
    from proxy import supervisor

    try:
        if args.envfile:
            load_envfile(args.envfile)
    except (ConfigError, OSError) as exc:
        print(f"Error: loading config: {exc}", file=sys.stderr)
        return 1
    if args.environ:
        # `caddy run --environ`: the same text as `environ`, then serve.
        from proxy.admin_client import environment_text

        sys.stdout.write(environment_text())
        sys.stdout.flush()
    if args.resume:
        # `caddy run --resume`: the autosave (written by the admin API on every pushed config)
        # wins over --config; without one, --config is used, as Caddy does.
        from proxy.admin import autosave_path

        saved = autosave_path()
        if saved.is_file():
            args.config, args.adapter = str(saved), "json"
        else:
            print(f"no autosaved config at {saved}; using --config", file=sys.stderr)
    if args.pidfile:
        try:
            # Caddy writes the pid file before it loads the config; so do we.
            Path(args.pidfile).write_text(f"{os.getpid()}\n")
        except OSError as exc:
            print(f"Error: writing pid file: {exc}", file=sys.stderr)
            return 1
    try:
        workers = supervisor.worker_count(args.workers, os.environ, _usable_cores())
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    # The lifecycle (config loading, workers, reloads, admin API, signals) lives in
    # proxy.supervisor; serving and config switching in proxy.worker.
    return supervisor.run(args, workers)
