"""`pyproxy trust`, `pyproxy untrust` and `pyproxy certs`: the local CA root and certificate status.

- `trust` prints the path of the local CA's root certificate (creating the CA in storage when it
  does not exist yet, as the first `tls internal` site would); with `--install` it installs the
  root as `caddy trust` does through smallstep/truststore: into every NSS database (Firefox
  profiles' cert9.db/cert8.db, ~/.pki/nssdb for Chromium) when `certutil` exists, then into the
  system store (`/usr/local/share/ca-certificates/` + `update-ca-certificates` on Debian), under
  truststore's nickname `Truststore Development CA <serial>`, so Caddy's `untrust` undoes ours.
  Through the image's `caddy` shim, `caddy trust` installs without a flag, as Caddy's does.
  Deviations: Caddy asks the running instance's admin API for the root, pyproxy reads storage;
  plain `pyproxy trust` prints the path and installs only with `--install` (for
  `curl --cacert "$(pyproxy trust)"`).
- `untrust` removes it from those stores again (`--cert FILE` names the root directly, as Caddy's).
- `certs` lists every managed name of a config with issuer, expiry, next renewal, state and the
  last error. It asks the running instance first (`GET /pyproxy/certificates` on its admin API:
  `--address`, else the config's `admin.listen`, else the default), since only it knows retry
  state; when none answers it reads storage alone (no CA is contacted) and says so.

The storage is the config's `storage` option when `--config` is given, else Caddy's default
folder (`$XDG_DATA_HOME/caddy`). With `storage redis` the CA is the cluster's, read (or created)
in Redis under certmagic's keys (`pki/authorities/<ca>/root.crt`); having no file to name,
`trust` then prints the root certificate itself, and `--install` exports it into the stores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from acme_client.certificates import CertificateError
from acme_client.local_ca import LocalCA
from acme_client.redis_storage import RedisStorage, close_storage
from acme_client.storage import (
    LOCAL_ISSUER_KEY,
    FileStorage,
    Storage,
    StorageError,
    ca_root_cert_key,
    default_storage_root,
)
from config.errors import ConfigError

SYSTEM_CA_DIR = Path("/usr/local/share/ca-certificates")
UPDATE_TOOL = "update-ca-certificates"
# Tests point the system store at a temporary folder; the real default stays unchanged.
TRUST_DIR_ENV = "PYPROXY_TRUST_DIR"
# smallstep/truststore names an installed root "<prefix><serial in decimal>"; Caddy passes no
# prefix, so its default is what `caddy trust` writes. Using the same nickname means `caddy
# untrust` removes what `pyproxy trust --install` added, and the other way round.
TRUSTSTORE_PREFIX = "Truststore Development CA "
# truststore_nss.go: trusted as a CA for TLS servers only ("C,,").
NSS_TRUST_FLAGS = "C,,"
CERTUTIL_INSTALL_HELP = 'apt install libnss3-tools" or "yum install nss-tools'
CERTUTIL_TIMEOUT_S = 60.0


def truststore_name(root: x509.Certificate) -> str:
    """The nickname smallstep/truststore (so `caddy trust`) gives this root in every store."""
    return TRUSTSTORE_PREFIX + str(root.serial_number)


def system_trust_filename(root: x509.Certificate) -> str:
    # truststore_linux.go: spaces become underscores; update-ca-certificates wants `.crt`.
    return truststore_name(root).replace(" ", "_") + ".crt"


def default_trust_dir() -> Path:
    override = os.environ.get(TRUST_DIR_ENV)
    return Path(override) if override else SYSTEM_CA_DIR


def nss_databases(home: Path) -> list[str]:
    """NSS databases as truststore finds them: Firefox profiles, then the user's ~/.pki/nssdb.

    Each is returned with certutil's scheme: `sql:` for cert9.db, `dbm:` for the legacy cert8.db.
    """
    candidates = sorted((home / ".mozilla" / "firefox").glob("*"))
    candidates.append(home / ".pki" / "nssdb")
    found: list[str] = []
    for profile in candidates:
        if not profile.is_dir():
            continue
        if (profile / "cert9.db").exists():
            found.append(f"sql:{profile}")
        elif (profile / "cert8.db").exists():
            found.append(f"dbm:{profile}")
    return found


class TrustError(Exception):
    """A trust store refused a change; the message names the command and its output."""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=CERTUTIL_TIMEOUT_S, check=False
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrustError(f'failed to execute "{" ".join(argv)}": {exc}') from exc


def _cmd_error(argv: list[str], proc: subprocess.CompletedProcess[str]) -> TrustError:
    # truststore's cmdError wording: `failed to execute "<cmd>": exit status N` + its output.
    output = (proc.stdout + proc.stderr).strip()
    return TrustError(f'failed to execute "{argv[0]} {argv[1]}": exit status {proc.returncode}'
                      + (f"\n\n{output}" if output else ""))  # fmt: skip


class NSSTrust:
    """Firefox / Chromium trust through `certutil`, as truststore's NSSTrust does."""

    def __init__(self, certutil: str, home: Path) -> None:
        self.certutil = certutil
        self.home = home

    @classmethod
    def find(cls, home: Path | None = None) -> NSSTrust | None:
        tool = shutil.which("certutil")
        return cls(tool, home or Path.home()) if tool else None

    def databases(self) -> list[str]:
        return nss_databases(self.home)

    def has(self, db: str, name: str) -> bool:
        return _run([self.certutil, "-V", "-d", db, "-u", "L", "-n", name]).returncode == 0

    def install(self, root_file: Path, name: str) -> list[str]:
        dbs = self.databases()
        if not dbs:
            raise TrustError("no NSS security databases found")
        for db in dbs:
            argv = [self.certutil, "-A", "-d", db, "-t", NSS_TRUST_FLAGS, "-n", name, "-i",
                    str(root_file)]  # fmt: skip
            proc = _run(argv)
            if proc.returncode != 0:
                raise _cmd_error(argv, proc)
        if not all(self.has(db, name) for db in dbs):
            raise TrustError("certificate cannot be installed in NSS security databases")
        return dbs

    def uninstall(self, name: str) -> list[str]:
        removed: list[str] = []
        for db in self.databases():
            if not self.has(db, name):
                continue  # truststore skips databases that do not hold it
            argv = [self.certutil, "-D", "-d", db, "-n", name]
            proc = _run(argv)
            if proc.returncode != 0:
                raise _cmd_error(argv, proc)
            removed.append(db)
        return removed


def _open_storage(args: argparse.Namespace) -> Storage:
    """The storage holding the local CA: the config's `storage` (a folder or Redis), else
    Caddy's default folder. The caller closes it (`close_storage`)."""
    if getattr(args, "config", None):
        from config.source import load_config
        from proxy.certs import redis_storage_from_config, storage_root_from_config

        config, _warnings = load_config(args.config, getattr(args, "adapter", None))
        redis_config = redis_storage_from_config(config)
        if redis_config is not None:
            # The CA every node of the cluster issues from: read (or created) in Redis.
            return RedisStorage.from_config(redis_config)
        return FileStorage(storage_root_from_config(config))
    return FileStorage(default_storage_root())


def _add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=None, help="config whose `storage` to use (default: Caddy's)"
    )
    parser.add_argument("--adapter", "-a", default=None, help="caddyfile or json (by file name)")
    parser.add_argument("--ca", default=LOCAL_ISSUER_KEY, help="CA id (default: local)")
    # Hidden: where the system store lives (tests); PYPROXY_TRUST_DIR does the same.
    parser.add_argument("--ca-dir", default=None, help=argparse.SUPPRESS)


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    _add_storage_arguments(parser)
    parser.add_argument(
        "--install",
        action="store_true",
        help="install the root into the system trust store and NSS databases (Firefox, "
        "Chromium) where certutil exists, as `caddy trust` does",
    )


def add_untrust_arguments(parser: argparse.ArgumentParser) -> None:
    _add_storage_arguments(parser)
    parser.add_argument(
        "--cert", "-p", default=None, help="the CA certificate file to untrust (instead of --ca)"
    )


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


def _trust_dir(args: argparse.Namespace) -> Path:
    return Path(args.ca_dir) if getattr(args, "ca_dir", None) else default_trust_dir()


def _update_trust_store(ca_dir: Path) -> None:
    """Run update-ca-certificates for the real system directory (never for a test folder)."""
    tool = shutil.which(UPDATE_TOOL)
    if tool is None or ca_dir.resolve() != SYSTEM_CA_DIR.resolve():
        return
    proc = _run([tool])
    if proc.returncode != 0:
        raise TrustError(f'failed to execute "{UPDATE_TOOL}": exit status {proc.returncode}'
                         f"\n\n{(proc.stdout + proc.stderr).strip()}")  # fmt: skip


def _note_nss_missing() -> None:
    # truststore's PreCheck skips NSS without certutil and says how to get it.
    print(f'warning: "certutil" is not available, install "certutil" with '
          f'"{CERTUTIL_INSTALL_HELP}" and try again', file=sys.stderr)  # fmt: skip


def install_root(root_file: Path, root: x509.Certificate, ca_dir: Path,
                 nss: NSSTrust | None) -> list[str]:  # fmt: skip
    """Install into NSS databases (when certutil exists), then the system store, in
    truststore's order. Returns what was done, one line each."""
    done: list[str] = []
    name = truststore_name(root)
    if nss is None:
        _note_nss_missing()
    elif nss.databases():
        done += [f"installed in NSS database {db}" for db in nss.install(root_file, name)]
    target = ca_dir / system_trust_filename(root)
    try:
        ca_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(root_file, tmp)
        os.chmod(tmp, 0o644)  # the trust store is world-readable; the root is public
        os.replace(tmp, target)
    except OSError as exc:
        raise TrustError(f"installing {root_file} as {target}: {exc}") from exc
    _update_trust_store(ca_dir)
    done.append(f"installed as {target}")
    return done


def legacy_installed_name(ca_id: str) -> str:
    # What pyproxy's `trust --install` wrote before it used truststore's name.
    return f"pyproxy-{ca_id}-root.crt"


def uninstall_root(
    root: x509.Certificate, ca_dir: Path, nss: NSSTrust | None, ca_id: str = LOCAL_ISSUER_KEY
) -> list[str]:
    done: list[str] = []
    legacy = ca_dir / legacy_installed_name(ca_id)
    try:
        legacy.unlink()
        done.append(f"removed {legacy}")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TrustError(f"removing {legacy}: {exc}") from exc
    if nss is not None:
        done += [f"removed from NSS database {db}" for db in nss.uninstall(truststore_name(root))]
    target = ca_dir / system_trust_filename(root)
    try:
        target.unlink()
    except FileNotFoundError:
        done.append(f"{target}: not installed")
        return done  # truststore's `rm -f` + update: nothing changed, nothing to refresh
    except OSError as exc:
        raise TrustError(f"removing {target}: {exc}") from exc
    _update_trust_store(ca_dir)
    done.append(f"removed {target}")
    return done


def trust_command(args: argparse.Namespace) -> int:
    storage: Storage | None = None
    try:
        storage = _open_storage(args)
        ca = LocalCA(storage, ca_id=args.ca)
        ca.provision()  # loads the CA, or creates it like the first `tls internal` site would
        root_pem = ca.root_cert_pem()
    except Exception as exc:  # config, storage or CA errors all end the command
        print(f"Error: local CA: {exc}", file=sys.stderr)
        return 1
    finally:
        if storage is not None:
            close_storage(storage)
    # Through the image's `caddy` shim (PYPROXY_PROG=caddy) the verb is Caddy's: it installs
    # without a flag, and prints no path a script would not expect.
    as_caddy = os.environ.get("PYPROXY_PROG") == "caddy"
    in_file = isinstance(storage, FileStorage)
    if not as_caddy:
        # A root in Redis has no file to name: print the certificate itself, so
        # `pyproxy trust -c Caddyfile > root.crt` exports it (Caddy prints nothing).
        if in_file:
            print(ca.root_cert_path())
        else:
            sys.stdout.write(root_pem.decode())
    if not (args.install or as_caddy):
        return 0
    # Caddy's installRoot message, then truststore's work.
    where = ca.root_cert_path() if in_file else ca.root_cert_label()
    print(f"installing root certificate (you might be prompted for password): {where}",
          file=sys.stderr)  # fmt: skip
    try:
        with contextlib.ExitStack() as stack:
            if in_file:
                root_file = ca.root_cert_path()
            else:
                # certutil and the system store take a file: export the root from storage.
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pyproxy-trust-"))
                root_file = Path(tmp) / "root.crt"
                root_file.write_bytes(root_pem)
            done = install_root(root_file, ca.root_certificate, _trust_dir(args), NSSTrust.find())
    except TrustError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    for line in done:
        print(line, file=sys.stderr)
    return 0


def _read_root(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN "):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _stored_root(args: argparse.Namespace) -> x509.Certificate:
    """The CA's root as stored (a file, or a Redis key); never creates a CA to untrust it."""
    storage = _open_storage(args)
    try:
        if isinstance(storage, FileStorage):
            return _read_root(LocalCA(storage, ca_id=args.ca).root_cert_path())
        return x509.load_pem_x509_certificate(storage.load(ca_root_cert_key(args.ca)))
    finally:
        close_storage(storage)


def untrust_command(args: argparse.Namespace) -> int:
    cert_arg: str | None = getattr(args, "cert", None)
    if cert_arg and (args.config or args.ca != LOCAL_ISSUER_KEY):
        # Caddy: --cert excludes the other flags.
        print("Error: conflicting command line arguments, cannot use --cert with other flags",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        root = _read_root(Path(cert_arg)) if cert_arg else _stored_root(args)
    except (OSError, ValueError, ConfigError, StorageError) as exc:
        print(f"Error: accessing certificate file: {exc}", file=sys.stderr)
        return 1
    try:
        done = uninstall_root(root, _trust_dir(args), NSSTrust.find(), args.ca)
    except TrustError as exc:
        print(f"Error: failed to uninstall certificate file: {exc}", file=sys.stderr)
        return 1
    for line in done:
        print(line, file=sys.stderr)
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
