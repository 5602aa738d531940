"""The one error type of the config front end.

Every problem found while lexing, parsing, adapting or loading a config is a
`ConfigError`. Its text is worded like Caddy's (tests compare substrings with
Caddy's own messages); `file` and `line` say where, when known, so that
`pyproxy check` can print `Caddyfile:12: message` style locations.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A config problem, with the file and line it was found at when known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    @property
    def location(self) -> str:
        """`file:line`, `file`, or "" when the place is unknown."""
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file or ""

    def __str__(self) -> str:
        return self.message
