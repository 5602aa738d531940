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


__all__ = ["Warning", "adapt_caddyfile"]
