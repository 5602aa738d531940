"""`{$VAR}` and `{$VAR:default}` substitution on raw Caddyfile text, before lexing.

Caddy replaces these spans in the text of the main file and of every imported file
(`replaceEnvVars` in caddyconfig/caddyfile/parse.go). Because it happens before
lexing, a value may contain spaces, quotes or braces and they become Caddyfile syntax.
The substitution is one level deep: a value that itself contains `{$X}` is not
expanded again. `{env.VAR}` is a runtime placeholder and is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SPAN_OPEN = "{$"
SPAN_CLOSE = "}"
DEFAULT_DELIMITER = ":"


def _lookup(environ: Mapping[str, str], name: str) -> str | None:
    try:
        return environ.get(name)
    except (UnicodeError, ValueError):
        # A name the OS cannot represent (lone surrogate, NUL) is simply not set.
        return None


def replace_env_vars(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace every `{$NAME}` / `{$NAME:default}` span in `text`.

    An unset variable becomes its default, or the empty string without one; a set
    but empty variable stays empty. `{$}` (no name) is kept literally. Scanning
    resumes after each inserted value, so values are never re-expanded.
    """
    if SPAN_OPEN not in text:
        return text
    env = os.environ if environ is None else environ
    parts: list[str] = []
    offset = 0
    while True:
        begin = text.find(SPAN_OPEN, offset)
        if begin < 0:
            break
        end = text.find(SPAN_CLOSE, begin + len(SPAN_OPEN))
        if end < 0:
            break
        name_and_default = text[begin + len(SPAN_OPEN) : end]
        if not name_and_default:
            parts.append(text[offset : end + len(SPAN_CLOSE)])
            offset = end + len(SPAN_CLOSE)
            continue
        name, has_default, default = name_and_default.partition(DEFAULT_DELIMITER)
        value = _lookup(env, name)
        if value is None:
            value = default if has_default else ""
        parts.append(text[offset:begin])
        parts.append(value)
        offset = end + len(SPAN_CLOSE)
    parts.append(text[offset:])
    return "".join(parts)
