"""`pyproxy trust`, `pyproxy untrust` and `pyproxy certs`: the local CA root and certificate status.

- `trust` prints the path of the local CA's root certificate (creating the CA in storage when it
  does not exist yet, as the first `tls internal` site would); with `--install` it copies the
  root into the system trust store (`/usr/local/share/ca-certificates/`, then
  `update-ca-certificates` when present), which is what Caddy's `trust` does on Debian.
- `untrust` removes that copy again.
- `certs` lists every managed name of a config with issuer, expiry, next renewal, state and the
  last error. It asks the running instance first (`GET /pyproxy/certificates` on its admin API:
  `--address`, else the config's `admin.listen`, else the default), since only it knows retry
  state; when none answers it reads storage alone (no CA is contacted) and says so.

The storage folder is the config's `storage` option when `--config` is given, else Caddy's
default (`$XDG_DATA_HOME/caddy`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from acme_client.certificates import CertificateError
from acme_client.local_ca import LocalCA
from acme_client.storage import LOCAL_ISSUER_KEY, FileStorage, default_storage_root
from config.errors import ConfigError

SYSTEM_CA_DIR = Path("/usr/local/share/ca-certificates")
UPDATE_TOOL = "update-ca-certificates"


def _installed_name(ca_id: str) -> str:
    # update-ca-certificates only picks up files ending in .crt.
    return f"pyproxy-{ca_id}-root.crt"


def _storage_root(args: argparse.Namespace) -> Path:
    if getattr(args, "config", None):
        from config.source import load_config
        from proxy.certs import storage_root_from_config

        config, _warnings = load_config(args.config, getattr(args, "adapter", None))
        return storage_root_from_config(config)
    return default_storage_root()


def _add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=None, help="config whose `storage` to use (default: Caddy's)"
    )
    parser.add_argument("--adapter", "-a", default=None, help="caddyfile or json (by file name)")
    parser.add_argument("--ca", default=LOCAL_ISSUER_KEY, help="CA id (default: local)")


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    _add_storage_arguments(parser)
    parser.add_argument(
        "--install", action="store_true", help="also install the root into the system trust store"
    )
    parser.add_argument("--ca-dir", default=str(SYSTEM_CA_DIR), help=argparse.SUPPRESS)


def add_untrust_arguments(parser: argparse.ArgumentParser) -> None:
    _add_storage_arguments(parser)
    parser.add_argument("--ca-dir", default=str(SYSTEM_CA_DIR), help=argparse.SUPPRESS)


def add_certs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="config file (default ./Caddyfile)")
    parser.add_argument("--adapter", "-a", default=None, help="caddyfile or json (by file name)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--address",
        default=None,
        help="admin API of the running instance (default: the config's admin.listen, "
        "else localhost:2019)",
    )


def _update_trust_store(ca_dir: Path) -> str | None:
    """Run update-ca-certificates for the system directory; an error message or None."""
    tool = shutil.which(UPDATE_TOOL)
    if tool is None or ca_dir.resolve() != SYSTEM_CA_DIR.resolve():
        return None
    try:
        proc = subprocess.run(
            [tool], capture_output=True, text=True, timeout=120, check=False
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{UPDATE_TOOL}: {exc}"
    if proc.returncode != 0:
        return f"{UPDATE_TOOL} exited with {proc.returncode}: {proc.stderr.strip()}"
    return None


def trust_command(args: argparse.Namespace) -> int:
    try:
        storage = FileStorage(_storage_root(args))
        ca = LocalCA(storage, ca_id=args.ca)
        ca.provision()  # loads the CA, or creates it like the first `tls internal` site would
    except Exception as exc:  # config, storage or CA errors all end the command
        print(f"Error: local CA: {exc}", file=sys.stderr)
        return 1
    root = ca.root_cert_path()
    print(root)
    if not args.install:
        return 0
    ca_dir = Path(args.ca_dir)
    target = ca_dir / _installed_name(args.ca)
    try:
        ca_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(root, tmp)
        os.chmod(tmp, 0o644)  # the trust store is world-readable; the root is public
        os.replace(tmp, target)
    except OSError as exc:
        print(f"Error: installing {root} as {target}: {exc}", file=sys.stderr)
        return 1
    error = _update_trust_store(ca_dir)
    if error is not None:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"installed as {target}", file=sys.stderr)
    return 0


def untrust_command(args: argparse.Namespace) -> int:
    ca_dir = Path(args.ca_dir)
    target = ca_dir / _installed_name(args.ca)
    try:
        target.unlink()
    except FileNotFoundError:
        print(f"{target}: not installed", file=sys.stderr)
        return 0
    except OSError as exc:
        print(f"Error: removing {target}: {exc}", file=sys.stderr)
        return 1
    error = _update_trust_store(ca_dir)
    if error is not None:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"removed {target}", file=sys.stderr)
    return 0


def _fmt_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "-"


# A running instance answers from memory at once; anything slower is not worth blocking on.
LIVE_STATUS_TIMEOUT_S = 5.0
CERT_COLUMNS = ("name", "issuer", "state", "expires", "next_renewal", "next_attempt", "last_error")


def _fmt_iso(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    try:
        return _fmt_time(datetime.fromisoformat(value).astimezone(UTC))
    except ValueError:
        return value


def live_certificates(
    address: str | None, config: Mapping[str, Any] | None
) -> tuple[list[dict[str, Any]] | None, str]:
    """Ask a running instance's admin API for `GET /pyproxy/certificates`.

    Returns (entries, where) on success, else (None, why not). Only a running instance knows
    retry state (last error, next attempt), so this is tried before reading storage.
    """
    from proxy.admin_client import AdminRequestError, admin_request, determine_admin_address

    admin = config.get("admin") if config else None
    if not address and isinstance(admin, Mapping) and admin.get("disabled"):
        return None, "the config disables the admin API"
    where = determine_admin_address(address, config)
    try:
        _status, body = admin_request(
            where, "GET", "/pyproxy/certificates", {}, None, timeout=LIVE_STATUS_TIMEOUT_S
        )
        entries = json.loads(body)
    except AdminRequestError as exc:
        return None, f"no running instance answered at {where}: {exc}"
    except ValueError as exc:
        return None, f"{where} answered with invalid JSON: {exc}"
    if not isinstance(entries, list):
        return None, f"{where} answered with something other than a list"
    return [e for e in entries if isinstance(e, dict)], where


def _live_rows(entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {
            "name": str(e.get("name", "")),
            "issuer": str(e.get("issuer") or "-"),
            "state": str(e.get("state") or "-"),
            "expires": _fmt_iso(e.get("not_after")),
            "next_renewal": _fmt_iso(e.get("next_renewal")),
            "next_attempt": _fmt_iso(e.get("next_attempt")),
            "last_error": str(e.get("last_error") or ""),
            "failures": str(int(e.get("failures") or 0)),
        }
        for e in entries
    ]


def _storage_rows(setup: Any) -> list[dict[str, str]]:
    from proxy.certs import certificate_status

    rows: list[dict[str, str]] = [
        {
            "name": s.name,
            "issuer": s.issuer or "-",
            "state": s.state,
            "expires": _fmt_time(s.not_after),
            "next_renewal": _fmt_time(s.next_renewal),
            "next_attempt": "-",
            "last_error": s.last_error or "",
            "failures": str(s.failures),
        }
        for s in certificate_status(setup)
    ]
    for manual in setup.manual:
        for name in manual.cert.names:
            rows.append(
                {
                    "name": name,
                    "issuer": "file" if manual.cert_path else "load_pem",
                    "state": "manual",
                    "expires": _fmt_time(manual.cert.not_after),
                    "next_renewal": "-",
                    "next_attempt": "-",
                    "last_error": "",
                    "failures": "0",
                }
            )
    return rows


def certs_command(args: argparse.Namespace) -> int:
    from config.source import load_config
    from proxy.certs import prepare_certificates

    address: str | None = getattr(args, "address", None)
    config: dict[str, Any] | None = None
    config_error: Exception | None = None
    try:
        loaded, _warnings = load_config(args.config, args.adapter)
        config = dict(loaded)
    except (ConfigError, OSError) as exc:
        # With --address the running instance can still be asked; storage needs the config.
        config_error = exc
        if not address:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    entries, where = live_certificates(address, config)
    storage_root = ""
    if entries is not None:
        source = f"running instance (admin API at {where})"
        rows = _live_rows(entries)
    else:
        if config is None:
            print(f"Error: {where}; and no config for storage: {config_error}", file=sys.stderr)
            return 1
        source = f"storage only ({where}; retry state unknown)"
        try:
            setup = prepare_certificates(config)
            rows = _storage_rows(setup)
        except (ConfigError, CertificateError, OSError) as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        storage_root = str(setup.storage_root)
    if args.json:
        doc: dict[str, Any] = {"source": source, "certificates": rows}
        if storage_root:
            doc["storage"] = storage_root
        print(json.dumps(doc, indent=2))
        return 0
    print(f"source: {source}")
    if storage_root:
        print(f"storage: {storage_root}")
    if not rows:
        print("no managed certificates")
        return 0
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in CERT_COLUMNS}
    print("  ".join(c.upper().ljust(widths[c]) for c in CERT_COLUMNS).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in CERT_COLUMNS).rstrip())
    return 0
