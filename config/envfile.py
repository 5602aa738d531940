"""`--envfile`: KEY=VALUE files loaded into the environment before a config is read.

Blank lines and `#` comments are skipped; an `export ` prefix and one pair of matching
quotes around the value are allowed, like Caddy's --envfile.
"""

from __future__ import annotations

import os

from config.errors import ConfigError


def parse_envfile(path: str) -> dict[str, str]:
    """The variables a file defines; ConfigError with file:line for a malformed line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"reading environment file: {exc}", path) from exc
    variables: dict[str, str] = {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{path}:{lineno}: expected KEY=VALUE", path, lineno)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        variables[key] = value
    return variables


def load_envfile(path: str) -> None:
    """Put the file's variables into os.environ (they win over inherited ones, like Caddy)."""
    os.environ.update(parse_envfile(path))
