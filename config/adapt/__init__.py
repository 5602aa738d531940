"""Caddyfile → Caddy JSON: the one entry point, `adapt_caddyfile`.

Importing this package registers every directive and global option (each module
registers its own on import), so the registry in `helper.py` is complete before any
Caddyfile is adapted.
"""

from __future__ import annotations

import importlib
from typing import Any

from config.adapt import builtins as _builtins  # noqa: F401  (registers directives)
from config.adapt import global_options as _global_options  # noqa: F401  (registers options)
from config.adapt.helper import Warning
from config.adapt.http_app import adapt_server_blocks
from config.caddyfile.parser import parse
from config.errors import ConfigError

# Directive modules written alongside this package; tolerated missing while in progress.
for _module in ("reverse_proxy", "headers", "encode"):
    try:
        importlib.import_module(f"config.adapt.{_module}")
    except ImportError as _exc:
        if _exc.name != f"config.adapt.{_module}":
            raise

NOT_FORMATTED = (
    "Caddyfile input is not formatted; run 'caddy fmt --overwrite' to fix inconsistencies"
)


def _formatting_warning(text: str, filename: str) -> Warning | None:
    """Caddy warns (never fails) when the input differs from its `caddy fmt` form."""
    try:
        from config.caddyfile.formatter import format_caddyfile
    except ImportError:
        return None
    body = text.replace("\r\n", "\n")
    formatted = format_caddyfile(body)
    if formatted == body:
        return None
    line = 1
    for i, ch in enumerate(body):
        if i >= len(formatted) or ch != formatted[i]:
            break
        if ch == "\n":
            line += 1
    return Warning(filename, line, NOT_FORMATTED)


def adapt_caddyfile(text: str, filename: str) -> tuple[dict[str, Any], list[Warning]]:
    """Adapt Caddyfile `text` (read from `filename`) to Caddy's JSON config.

    Raises ConfigError, worded like Caddy's errors, when the Caddyfile is invalid.
    """
    blocks = parse(filename or "Caddyfile", text)
    config, warnings = adapt_server_blocks(blocks)
    warning = _formatting_warning(text, filename or "Caddyfile")
    if warning is not None:
        warnings.append(warning)
    return config, warnings


def caddyfile_errors(text: str, filename: str) -> list[ConfigError]:
    """Every error `pyproxy check` can report for a Caddyfile, in file order ([] when valid).

    Adapting stops at the first error. Site blocks adapt independently of each other, so after a
    failure each site block is adapted again on its own (with the global options) to find the
    errors of the other blocks too. A parse error stops there: past it the structure is unknown.
    """
    try:
        blocks = parse(filename or "Caddyfile", text)
    except ConfigError as exc:
        return [exc]
    try:
        adapt_server_blocks(blocks)
    except ConfigError as exc:
        errors = [exc]
    else:
        return []
    global_blocks = [b for b in blocks[:1] if not b.keys]
    for block in blocks[len(global_blocks) :]:
        try:
            adapt_server_blocks([*global_blocks, block])
        except ConfigError as exc:
            if all(str(exc) != str(seen) for seen in errors):
                errors.append(exc)
    return sorted(errors, key=lambda e: (e.file or "", e.line or 0))


__all__ = ["Warning", "adapt_caddyfile", "caddyfile_errors"]
