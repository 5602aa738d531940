"""Reading a config file and turning it into Caddy JSON (adapting Caddyfiles)."""

from __future__ import annotations

import json
import os
from typing import Any

from config.adapt.helper import Warning
from config.errors import ConfigError

DEFAULT_CONFIG_FILE = "Caddyfile"


def guess_adapter(path: str) -> str:
    """Like Caddy: `Caddyfile*` and `*.caddyfile` are Caddyfiles, everything else is JSON."""
    base = os.path.basename(path)
    if base.startswith("Caddyfile") or base.endswith(".caddyfile"):
        return "caddyfile"
    return "json"


def read_config_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"reading config file: {exc.strerror}: {path}", path) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file is not valid UTF-8: {exc}", path) from exc


def load_config(
    path: str | None, adapter: str | None = None
) -> tuple[dict[str, Any], list[Warning]]:
    """Read `path` (default ./Caddyfile) and return the Caddy JSON config and any warnings."""
    path = path or DEFAULT_CONFIG_FILE
    adapter = adapter or guess_adapter(path)
    text = read_config_text(path)
    if adapter == "caddyfile":
        from config.adapt import adapt_caddyfile

        return adapt_caddyfile(text, path)
    if adapter != "json":
        raise ConfigError(f"unrecognized config adapter: {adapter}")
    try:
        config = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"decoding JSON config: {exc.msg}", path, exc.lineno) from exc
    if not isinstance(config, dict):
        raise ConfigError("JSON config must be an object", path, 1)
    return config, []
