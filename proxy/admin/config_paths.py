"""Config paths of the admin API: `/config/<path>` traversal and mutation (Caddy's
unsyncedConfigAccess), the `@id` index (indexConfigObjects), and JSON read and written like Go's
encoding/json so `/config/` output and ETags are stable.

Pure: works on decoded JSON values, no I/O; errors are TraversalError / ValueError, which the
HTTP layer (proxy.admin.api) turns into Caddy's status codes.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

CONFIG_KEY = "config"
ID_KEY = "@id"


# --- JSON like Go's encoding/json ------------------------------------------------------------


def go_json(value: Any) -> bytes:
    """Encode like Go's json.Encoder on decoded JSON: map keys sorted, compact, HTML-sensitive
    characters escaped, trailing newline. Keeps `/config/` output and ETags stable."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return text.encode("utf-8") + b"\n"


_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def decode_json_body(body: bytes) -> Any:
    """Decode a request body as Go would (NaN/Infinity are not JSON); APIError-free, raises
    ValueError with a Caddy-like message."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"decoding request body: invalid UTF-8 at offset {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"decoding request body: {exc.msg}, at offset {exc.pos}") from exc


# --- config traversal (Caddy's unsyncedConfigAccess semantics) ------------------------------


class TraversalError(Exception):
    """A path or value problem in a /config/ request; `status` None means "plain error" (Caddy
    answers those with 400 on GET and 500 on changes)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _array_index(text: str) -> int:
    # Canonical decimal only: "01" or "+1" would name the same element two ways.
    if text == "":
        raise ValueError("empty index")
    try:
        idx = int(text, 10)
    except ValueError:
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax') from None
    if str(idx) != text:
        raise ValueError("non-canonical array index")
    return idx


def config_access(root: dict[str, Any], method: str, path: str, value: Any = None) -> Any:
    """Read or change `root` ({"config": <config>}) at `path` ("/config/apps/http/...").

    GET returns the value found (None for a missing key, as Caddy answers `null`). POST sets a
    key or appends to an array (`.../...` appends the elements of an array value), PUT creates
    a key (409 when it exists) or inserts into an array, PATCH replaces (404 when missing),
    DELETE removes. Changes are made in place.
    """
    clean = path.strip("/")
    if not clean:
        raise TraversalError("no traversable path")
    parts = clean.split("/")
    ellipses = parts[-1] == "..."
    if ellipses:
        parts = parts[:-1]
    ptr: Any = root
    for i, part in enumerate(parts):
        if isinstance(ptr, dict):
            arr = ptr.get(part)
            if isinstance(arr, list) and i == len(parts) - 2:
                return _array_access(ptr, part, arr, method, path, parts[-1], value, ellipses)
            if i == len(parts) - 1:
                return _key_access(ptr, part, method, path, value, ellipses)
            if ptr.get(part) is None and method == "PUT":
                ptr[part] = {}
            ptr = ptr.get(part)
        elif isinstance(ptr, list):
            where = "/".join(parts[: i + 1])
            try:
                idx = _array_index(part)
            except ValueError as exc:
                raise TraversalError(f"[/{where}] invalid array index '{part}': {exc}") from None
            if idx < 0 or idx >= len(ptr):
                raise TraversalError(f"[/{where}] array index out of bounds: {part}")
            ptr = ptr[idx]
        else:
            raise TraversalError(f"invalid traversal path at: {'/'.join(parts[: i + 1])}")
    return None


def _array_access(
    parent: dict[str, Any],
    key: str,
    arr: list[Any],
    method: str,
    path: str,
    idx_text: str,
    value: Any,
    ellipses: bool,
) -> Any:
    idx = 0
    if method != "POST":
        try:
            idx = _array_index(idx_text)
        except ValueError as exc:
            raise TraversalError(f"[{path}] invalid array index '{idx_text}': {exc}") from None
        if idx < 0 or (method != "PUT" and idx >= len(arr)) or idx > len(arr):
            raise TraversalError(f"[{path}] array index out of bounds: {idx_text}")
    if method == "GET":
        return arr[idx]
    if method == "POST":
        # Like Caddy, POST to `.../array/N` appends; the index is not used.
        _append(parent, key, arr, value, ellipses)
    elif method == "PUT":
        arr.insert(idx, value)
    elif method == "PATCH":
        arr[idx] = value
    elif method == "DELETE":
        del arr[idx]
    else:
        raise TraversalError(f"unrecognized method {method}")
    return None


def _key_access(
    obj: dict[str, Any], key: str, method: str, path: str, value: Any, ellipses: bool
) -> Any:
    if method == "GET":
        return obj.get(key)
    if method == "POST":
        current = obj.get(key)
        if isinstance(current, list):
            _append(obj, key, current, value, ellipses)
        else:
            obj[key] = value
    elif method == "PUT":
        if key in obj:
            raise TraversalError(f"[{path}] key already exists: {key}", 409)
        obj[key] = value
    elif method == "PATCH":
        if key not in obj:
            raise TraversalError(f"[{path}] key does not exist: {key}", 404)
        obj[key] = value
    elif method == "DELETE":
        if key not in obj:
            raise TraversalError(f"[{path}] key does not exist: {key}", 404)
        del obj[key]
    else:
        raise TraversalError(f"unrecognized method {method}")
    return None


def _append(obj: dict[str, Any], key: str, arr: list[Any], value: Any, ellipses: bool) -> None:
    if ellipses:
        if not isinstance(value, list):
            raise TraversalError("final element is not an array")
        obj[key] = arr + value
    else:
        obj[key] = [*arr, value]


def index_ids(config: Any, base: str = "/" + CONFIG_KEY) -> dict[str, str]:
    """Map every `@id` in `config` to its path (Caddy's indexConfigObjects); duplicate IDs and
    IDs that are neither strings nor numbers are errors, as in Caddy."""
    index: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == ID_KEY:
                    if isinstance(v, bool) or not isinstance(v, str | int | float):
                        raise ValueError(f"{where}: {ID_KEY} field must be a string or number")
                    ident = v if isinstance(v, str) else _go_number(v)
                    if ident in index:
                        raise ValueError(
                            f"duplicate ID '{ident}' found at {index[ident]} and {where}"
                        )
                    index[ident] = where
                    continue
                walk(v, posixpath.join(where, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, posixpath.join(where, str(i)))

    walk(config, base)
    return index


def _go_number(v: int | float) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def strip_meta_fields(config: Any) -> Any:
    """A copy of `config` without `@id` keys (what Caddy decodes the config from)."""
    if isinstance(config, dict):
        return {k: strip_meta_fields(v) for k, v in config.items() if k != ID_KEY}
    if isinstance(config, list):
        return [strip_meta_fields(v) for v in config]
    return config
