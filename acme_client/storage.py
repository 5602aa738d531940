"""Caddy-compatible certificate storage: key naming, the file-system backend, cert resources.

This module owns the on-disk layout Caddy (through certmagic) uses, so that a `caddy_data` volume
written by Caddy is read by pyproxy and the other way round:

    certificates/<issuer_key>/<name>/<name>.crt|.key|.json
    acme/<issuer_key>/users/<email or "default">/<username>.json|.key
    acme/<issuer_key>/challenge_tokens/<domain>.json
    locks/<name>.lock                       (see acme_client.locks)
    pki/authorities/<ca_id>/root.crt|root.key|intermediate.crt|intermediate.key
    pyproxy/acme_retry/<name>.json          (pyproxy only; see acme_client.retry_record)

Keys are slash-separated strings, independent of the OS path syntax, exactly like certmagic's
`Storage` keys. Every path component that comes from a name goes through `safe_key`.

Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory) so a
crash or a concurrent reader never sees half a certificate. Blocking I/O is deliberate: the engine
calls these functions from worker threads.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat as stat_module
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from acme_client.locks import Locker

# certmagic's prefixes (storage.go, acmeissuer.go, caddypki/ca.go).
PREFIX_CERTS = "certificates"
PREFIX_ACME = "acme"
PREFIX_LOCKS = "locks"
PREFIX_PKI_AUTHORITIES = "pki/authorities"
# pyproxy's own keys live under a prefix of their own, outside `certificates/` and `acme/`: Caddy's
# storage cleaner (certmagic CleanStorage) walks those and must never meet a file it does not know.
PREFIX_PYPROXY = "pyproxy"

# certmagic stores account material under this pseudo-address when no email is configured.
EMPTY_EMAIL = "default"

# The issuer key of Caddy's default internal CA (caddypki.DefaultCAID).
LOCAL_ISSUER_KEY = "local"

# certmagic's NamesKey truncates absurdly long SAN lists to keep file names legal.
NAMES_KEY_MAX_CHARS = 1024

# certmagic creates directories 0700 and files 0600 (filestorage.go): storage holds private keys.
DIR_MODE = 0o700
FILE_MODE = 0o600

# Replacements of certmagic's KeyBuilder.Safe, applied in this order after lowercasing/trimming.
_SAFE_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    (" ", "_"),
    ("+", "_plus_"),
    ("*", "wildcard_"),
    (":", "-"),
    ("..", ""),  # no directory traversal; single dots stay (they are in every domain name)
)
_SAFE_REPLACE_RE = re.compile("|".join(re.escape(old) for old, _new in _SAFE_REPLACEMENTS))
_SAFE_REPLACE_MAP = dict(_SAFE_REPLACEMENTS)
# Go's \w is ASCII-only: [0-9A-Za-z_].
_UNSAFE_CHARS_RE = re.compile(r"[^0-9A-Za-z_@.\-]")


class StorageError(Exception):
    """A storage operation failed; the message starts with the key or path concerned."""


class StorageUnavailableError(StorageError, OSError):
    """The storage backend could not be reached (a Redis server down, a timeout).

    An OSError too, so every caller that already survives an I/O error of the file system (logs,
    retries later, keeps serving what it has in memory) survives a network storage outage alike.
    """


def safe_key(text: str) -> str:
    """Make `text` safe as one storage key component, like certmagic's `KeyBuilder.Safe`.

    Lowercase, trimmed; ' ' -> '_', '+' -> '_plus_', '*' -> 'wildcard_', ':' -> '-', '..' removed,
    then anything but ASCII letters, digits, '_', '@', '.', '-' dropped.
    """
    # Go's strings.NewReplacer scans left to right and, at each position, applies the first
    # matching old string; one combined regex alternation reproduces that.
    text = text.lower().strip()
    text = _SAFE_REPLACE_RE.sub(lambda m: _SAFE_REPLACE_MAP[m.group(0)], text)
    return _UNSAFE_CHARS_RE.sub("", text)


def issuer_key_from_ca_url(ca_url: str) -> str:
    """The issuer key certmagic derives from an ACME directory URL.

    `https://acme-v02.api.letsencrypt.org/directory` -> `acme-v02.api.letsencrypt.org-directory`:
    host (with port), then the path with slashes turned into hyphens and trimmed of hyphens.
    """
    parts = urlsplit(ca_url)
    if not parts.netloc and not parts.scheme:
        return ca_url
    key = parts.netloc
    path = parts.path.replace("/", "-").replace("\\", "-").strip("-")
    if path:
        key += "-" + path
    return key


def names_key(sans: Iterable[str]) -> str:
    """certmagic's `CertificateResource.NamesKey`: sorted SANs joined by commas, truncated."""
    result = ",".join(sorted(sans))
    if len(result) > NAMES_KEY_MAX_CHARS:
        trunc = "_trunc"
        result = result[: NAMES_KEY_MAX_CHARS - len(trunc)] + trunc
    return result


def normalize_name(name: str) -> str:
    """ASCII (punycode) form of a domain name, as certmagic does before building storage keys.

    Labels that are already ASCII are left alone, so wildcards and IP addresses pass unchanged.
    """
    labels = name.split(".")
    out = []
    for label in labels:
        if label.isascii():
            out.append(label)
        else:
            out.append(label.encode("idna").decode("ascii"))
    return ".".join(out)


# --- key builders (certmagic's StorageKeys, account keys, challenge keys, caddypki keys) ---------


def certs_prefix(issuer_key: str) -> str:
    return f"{PREFIX_CERTS}/{safe_key(issuer_key)}"


def certs_site_prefix(issuer_key: str, name: str) -> str:
    return f"{certs_prefix(issuer_key)}/{safe_key(name)}"


def site_cert_key(issuer_key: str, name: str) -> str:
    return f"{certs_site_prefix(issuer_key, name)}/{safe_key(name)}.crt"


def site_private_key_key(issuer_key: str, name: str) -> str:
    return f"{certs_site_prefix(issuer_key, name)}/{safe_key(name)}.key"


def site_meta_key(issuer_key: str, name: str) -> str:
    return f"{certs_site_prefix(issuer_key, name)}/{safe_key(name)}.json"


def acme_ca_prefix(issuer_key: str) -> str:
    return f"{PREFIX_ACME}/{safe_key(issuer_key)}"


def users_prefix(issuer_key: str) -> str:
    return f"{acme_ca_prefix(issuer_key)}/users"


def user_prefix(issuer_key: str, email: str) -> str:
    return f"{users_prefix(issuer_key)}/{safe_key(email or EMPTY_EMAIL)}"


def _email_username(email: str) -> str:
    # certmagic: the part before '@'; a leading '@' is dropped; no '@' -> the whole string.
    at = email.find("@")
    if at == -1:
        return email
    if at == 0:
        return email[1:]
    return email[:at]


def _user_file_key(issuer_key: str, email: str, default_filename: str, extension: str) -> str:
    email = (email or EMPTY_EMAIL).lower()
    filename = _email_username(email) or default_filename
    return f"{user_prefix(issuer_key, email)}/{safe_key(filename)}{extension}"


def user_registration_key(issuer_key: str, email: str) -> str:
    """`acme/<issuer>/users/<email>/<username>.json` (the account resource)."""
    return _user_file_key(issuer_key, email, "registration", ".json")


def user_private_key_key(issuer_key: str, email: str) -> str:
    """`acme/<issuer>/users/<email>/<username>.key` (the account key)."""
    return _user_file_key(issuer_key, email, "private", ".key")


def challenge_tokens_prefix(issuer_key: str) -> str:
    return f"{acme_ca_prefix(issuer_key)}/challenge_tokens"


def challenge_tokens_key(issuer_key: str, domain: str) -> str:
    """Where certmagic's distributed solver publishes HTTP-01 info so any node can answer."""
    return f"{challenge_tokens_prefix(issuer_key)}/{safe_key(domain)}.json"


def lock_key(name: str) -> str:
    """`locks/<name>.lock`; certmagic's FileStorage names lock files this way."""
    return f"{PREFIX_LOCKS}/{safe_key(name)}.lock"


def retry_record_key(name: str) -> str:
    """`pyproxy/acme_retry/<name>.json`: the retry record of one managed name (any issuer).

    One record per name, not per issuer: a job tries all its issuers in one attempt, and the
    backoff (certmagic's retry schedule) is per attempt. certmagic keeps this state in memory only.
    """
    return f"{PREFIX_PYPROXY}/acme_retry/{safe_key(normalize_name(name))}.json"


def ca_prefix(ca_id: str = LOCAL_ISSUER_KEY) -> str:
    return f"{PREFIX_PKI_AUTHORITIES}/{safe_key(ca_id)}"


def ca_root_cert_key(ca_id: str = LOCAL_ISSUER_KEY) -> str:
    return f"{ca_prefix(ca_id)}/root.crt"


def ca_root_key_key(ca_id: str = LOCAL_ISSUER_KEY) -> str:
    return f"{ca_prefix(ca_id)}/root.key"


def ca_intermediate_cert_key(ca_id: str = LOCAL_ISSUER_KEY) -> str:
    return f"{ca_prefix(ca_id)}/intermediate.crt"


def ca_intermediate_key_key(ca_id: str = LOCAL_ISSUER_KEY) -> str:
    return f"{ca_prefix(ca_id)}/intermediate.key"


# --- the file-system backend ------------------------------------------------------------------


def default_storage_root(
    environ: Mapping[str, str] | None = None, platform: str | None = None
) -> Path:
    """Caddy's default data directory (caddy.AppDataDir).

    `$XDG_DATA_HOME/caddy` when set (Caddy's Docker image sets XDG_DATA_HOME=/data, hence
    `/data/caddy`), else `$HOME/.local/share/caddy` (`~/Library/Application Support/Caddy` on
    macOS), else `./caddy` when HOME is unset.
    """
    env = os.environ if environ is None else environ
    plat = sys.platform if platform is None else platform
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg:
        return Path(xdg) / "caddy"
    home = env.get("HOME", "")
    if home:
        if plat == "darwin":
            return Path(home) / "Library" / "Application Support" / "Caddy"
        return Path(home) / ".local" / "share" / "caddy"
    return Path("./caddy")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What `Storage.stat` reports, like certmagic's KeyInfo."""

    key: str
    modified: datetime
    size: int
    is_terminal: bool  # a file, not a "directory" of keys


class Storage(Protocol):
    """certmagic's `Storage` interface: slash-separated keys to byte values, plus its locks.

    Implementations: `FileStorage` (below) and `acme_client.redis_storage.RedisStorage`. Every
    method blocks (callers run them in worker threads) and is bounded in time. A missing key is
    FileNotFoundError from `load`, `stat` and `list`; an unreachable backend is
    StorageUnavailableError (an OSError).
    """

    def store(self, key: str, value: bytes) -> None: ...
    def load(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str, recursive: bool = False) -> list[str]: ...
    def stat(self, key: str) -> KeyInfo: ...
    def store_all(self, items: Sequence[tuple[str, bytes]]) -> None: ...

    def label(self, key: str) -> str:
        """Where `key` lives, for messages (a file name, or the Redis key)."""
        ...

    def new_locker(self) -> Locker:
        """The locks that go with this storage (certmagic's Storage embeds its Locker)."""
        ...


class FileStorage:
    """certmagic's FileStorage: keys map to files below `root`.

    `load` and `stat` raise FileNotFoundError (a subclass of OSError) for a missing key, which is
    what callers test for (certmagic uses fs.ErrNotExist the same way).
    """

    __slots__ = ("root",)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FileStorage:{self.root}"

    def label(self, key: str) -> str:
        return str(self.filename(key))

    def new_locker(self) -> Locker:
        from acme_client.locks import FileLocker  # locks builds on this module

        return FileLocker(self)

    def filename(self, key: str) -> Path:
        """The file that holds `key`. Refuses keys that would leave the storage root."""
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts) or key.startswith("/"):
            raise StorageError(f"{key}: invalid storage key")
        return self.root.joinpath(*parts) if parts else self.root

    def store(self, key: str, value: bytes) -> None:
        """Write `value` atomically (readers see the old or the new content, never a mix)."""
        path = self.filename(key)
        make_dirs(path.parent)
        atomic_write(path, value, FILE_MODE)

    def load(self, key: str) -> bytes:
        return self.filename(key).read_bytes()

    def delete(self, key: str) -> None:
        """Remove a key or a whole prefix (certmagic: os.RemoveAll). Missing is not an error."""
        path = self.filename(key)
        if path.is_dir() and not path.is_symlink():
            for dirpath, dirnames, filenames in os.walk(path, topdown=False):
                for name in filenames:
                    os.unlink(os.path.join(dirpath, name))
                for name in dirnames:
                    sub = os.path.join(dirpath, name)
                    if os.path.islink(sub):
                        os.unlink(sub)
                    else:
                        os.rmdir(sub)
            os.rmdir(path)
            return
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self.filename(key).exists()

    def list(self, prefix: str, recursive: bool = False) -> list[str]:
        """Keys below `prefix` (directories too), sorted; only direct children unless recursive.

        Raises FileNotFoundError when the prefix does not exist, like certmagic.
        """
        base = self.filename(prefix)
        if not base.is_dir():
            if base.exists():
                return []
            raise FileNotFoundError(str(base))
        prefix = prefix.rstrip("/")
        keys: list[str] = []

        def walk(directory: Path, rel: str) -> None:
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                if _is_temp_name(entry.name):
                    continue  # an atomic write in progress is not a key yet
                child = f"{rel}/{entry.name}" if rel else entry.name
                keys.append(f"{prefix}/{child}" if prefix else child)
                if recursive and entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), child)

        walk(base, "")
        return keys

    def stat(self, key: str) -> KeyInfo:
        st = self.filename(key).stat()
        return KeyInfo(
            key=key,
            modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            size=st.st_size,
            is_terminal=not stat_module.S_ISDIR(st.st_mode),
        )

    def store_all(self, items: Sequence[tuple[str, bytes]]) -> None:
        store_all_or_none(self, items)


def store_all_or_none(storage: Storage, items: Sequence[tuple[str, bytes]]) -> None:
    """Store several keys; if one fails, delete those already written (certmagic's storeTx)."""
    done: list[str] = []
    try:
        for key, value in items:
            storage.store(key, value)
            done.append(key)
    except BaseException:
        for key in done:
            try:
                storage.delete(key)
            except OSError:
                pass
        raise


_TEMP_PREFIX = ".pyproxy-tmp-"


def make_dirs(directory: Path, mode: int = DIR_MODE) -> None:
    """mkdir -p where every created level gets `mode` (Path.mkdir gives parents the default)."""
    if directory.is_dir():
        return
    make_dirs(directory.parent, mode)
    try:
        directory.mkdir(mode=mode)
    except FileExistsError:
        if not directory.is_dir():
            raise


def _is_temp_name(name: str) -> bool:
    return name.startswith(_TEMP_PREFIX)


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` through a temp file in the same directory, then rename over it.

    fsync the file before the rename and the directory after it, so after a crash the name points
    to either the complete old or the complete new content.
    """
    directory = path.parent
    tmp = directory / f"{_TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)  # the umask may have narrowed or the file may be reused: be exact
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# --- certificate resources ---------------------------------------------------------------------


@dataclass(slots=True)
class CertificateResource:
    """A certificate with its key and metadata, as certmagic keeps it in storage.

    `certificate_pem` is the full chain (leaf first); `private_key_pem` the leaf's key.
    `issuer_data` is whatever the issuer recorded (for ACME: url, ca, account, ...); None when
    absent.
    """

    sans: list[str]
    certificate_pem: bytes
    private_key_pem: bytes
    issuer_key: str
    issuer_data: Any = None
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def names_key(self) -> str:
        return names_key(self.sans)

    def metadata_json(self) -> bytes:
        """The `.json` file: Go's json.MarshalIndent(res, "", "\\t") with omitempty fields."""
        meta: dict[str, Any] = {}
        if self.sans:
            # certmagic marshals before NamesKey() sorts the list: SANs keep the issuer's order.
            meta["sans"] = list(self.sans)
        if self.issuer_data is not None:
            meta["issuer_data"] = self.issuer_data
        for k, v in self.extra_meta.items():
            meta.setdefault(k, v)
        return json.dumps(meta, indent="\t").encode("utf-8")


def save_certificate_resource(storage: Storage, resource: CertificateResource) -> None:
    """Store key, chain and metadata under `certificates/<issuer>/<names key>/`.

    The order (key, cert, meta) and roll-back on failure follow certmagic's saveCertResource.
    """
    name = normalize_name(resource.names_key())
    storage.store_all(
        [
            (site_private_key_key(resource.issuer_key, name), resource.private_key_pem),
            (site_cert_key(resource.issuer_key, name), resource.certificate_pem),
            (site_meta_key(resource.issuer_key, name), resource.metadata_json()),
        ]
    )


def load_certificate_resource(
    storage: Storage, issuer_key: str, cert_names_key: str
) -> CertificateResource:
    """Load what `save_certificate_resource` (or Caddy) stored. FileNotFoundError when absent."""
    name = normalize_name(cert_names_key)
    key_pem = storage.load(site_private_key_key(issuer_key, name))
    cert_pem = storage.load(site_cert_key(issuer_key, name))
    meta_key = site_meta_key(issuer_key, name)
    meta_bytes = storage.load(meta_key)
    try:
        meta = json.loads(meta_bytes or b"{}")
    except ValueError as exc:
        raise StorageError(f"{meta_key}: decoding certificate metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise StorageError(f"{meta_key}: decoding certificate metadata: not a JSON object")
    sans = meta.get("sans") or []
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        raise StorageError(f"{meta_key}: decoding certificate metadata: 'sans' is not a list")
    extra = {k: v for k, v in meta.items() if k not in ("sans", "issuer_data")}
    return CertificateResource(
        sans=list(sans),
        certificate_pem=cert_pem,
        private_key_pem=key_pem,
        issuer_key=issuer_key,
        issuer_data=meta.get("issuer_data"),
        extra_meta=extra,
    )


def list_issuer_keys(storage: Storage) -> list[str]:
    """Issuer directories under `certificates/` (safe-key form, e.g. `local`)."""
    try:
        keys = storage.list(PREFIX_CERTS)
    except FileNotFoundError:
        return []
    return [k.rsplit("/", 1)[-1] for k in keys if not storage.stat(k).is_terminal]


def delete_certificate_resource(storage: Storage, issuer_key: str, cert_names_key: str) -> None:
    storage.delete(certs_site_prefix(issuer_key, normalize_name(cert_names_key)))
