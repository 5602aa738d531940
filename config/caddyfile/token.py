"""The Caddyfile token: the unit the lexer produces and everything downstream consumes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Token:
    """One Caddyfile token.

    `was_quoted` is "" for a bare token, '"' or '`' for a quoted one and "<" for a
    heredoc (Caddy's `wasQuoted` rune). `imports` is the chain of files a token
    was imported through (outermost first), used in error messages and to tell
    tokens of different import chains apart when deciding what is "on one line".
    """

    file: str
    line: int
    text: str
    was_quoted: str = ""
    heredoc_marker: str = ""
    imports: tuple[str, ...] = field(default_factory=tuple)
    snippet_name: str = ""

    def num_line_breaks(self) -> int:
        """Line breaks inside the token; a heredoc also spans its two marker lines."""
        breaks = self.text.count("\n")
        if self.was_quoted == "<":
            breaks += 2
        return breaks

    def is_open_brace(self) -> bool:
        return self.was_quoted == "" and self.text == "{"

    def is_close_brace(self) -> bool:
        return self.was_quoted == "" and self.text == "}"


def is_next_on_new_line(first: Token, second: Token) -> bool:
    """Whether `second` starts on a later line than `first` ends on.

    Tokens from different files or import chains are always on different lines.
    """
    if first.file != second.file or first.imports != second.imports:
        return True
    return first.line + first.num_line_breaks() < second.line
