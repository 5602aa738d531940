"""The Caddyfile lexer: text in, `Token`s out (no env vars, imports or snippets here).

The rules follow Caddy's `caddyconfig/caddyfile/lexer.go` so that every quirk of the
reference implementation is reproduced (the conformance vectors check them):

- tokens are separated by whitespace as Go's `unicode.IsSpace` sees it (not Python's
  `str.isspace`, which also counts U+001C..U+001F);
- a leading BOM is dropped, and `\\r` is ignored outside quotes and heredocs;
- `"..."` allows newlines and only `\\"` as an escape; backticks are raw;
- `#` starts a comment only at the start of a token and runs to the end of the line;
- outside quotes a backslash before a newline joins the lines (the following tokens
  keep the line number of the line that was continued);
- `<<MARKER` starts a heredoc; the closing marker's indentation is removed from
  every line, with Caddy's error messages when that is impossible.

An unterminated quote is not a lexer error: the rest of the input becomes one token.
"""

from __future__ import annotations

import re

from config.caddyfile.token import Token
from config.errors import ConfigError

BYTE_ORDER_MARK = "\ufeff"

# Go's unicode.IsSpace: the Latin-1 spaces plus the Unicode White_Space property.
GO_SPACE_CHARS = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)

_HEREDOC_MARKER = re.compile(r"[A-Za-z0-9_-]+")


def is_go_space(ch: str) -> bool:
    """Whether Go's `unicode.IsSpace` reports `ch` as whitespace."""
    return ch in GO_SPACE_CHARS


def tokenize(text: str, filename: str) -> list[Token]:
    """Split Caddyfile `text` into tokens whose `file` is `filename`.

    Raises ConfigError (with the file and line) for malformed heredocs.
    """
    scanner = _Scanner(text, filename)
    tokens: list[Token] = []
    while (token := scanner.next_token()) is not None:
        tokens.append(token)
    return tokens


class _Scanner:
    """Reads one token at a time; `line` is where the next token starts.

    `pending_lines` counts line breaks consumed but not yet added to `line`: escaped
    newlines (so the continued tokens stay on the first line) and heredoc bodies (so
    the heredoc token itself carries the line it started on).
    """

    __slots__ = ("filename", "line", "pending_lines", "pos", "text")

    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        self.pos = 1 if text.startswith(BYTE_ORDER_MARK) else 0
        self.line = 1
        self.pending_lines = 0

    def _error(self, message: str, line: int) -> ConfigError:
        return ConfigError(message, self.filename, line)

    def _make(self, start_line: int, chars: list[str], quote: str) -> Token:
        return Token(file=self.filename, line=start_line, text="".join(chars), was_quoted=quote)

    def _newline(self) -> None:
        self.line += 1 + self.pending_lines
        self.pending_lines = 0

    def next_token(self) -> Token | None:
        text = self.text
        end = len(text)
        chars: list[str] = []
        start_line = self.line
        in_comment = False
        in_double = False
        in_backtick = False
        escaped = False
        heredoc_escaped = False  # a `\<<` that must not start a heredoc

        while self.pos < end:
            ch = text[self.pos]
            self.pos += 1

            if (
                not in_double
                and not in_backtick
                and not heredoc_escaped
                and len(chars) > 1
                and chars[0] == "<"
                and chars[1] == "<"
            ):
                # The token began with `<<`: collect the marker up to the end of the line.
                if ch == " ":
                    return self._make(start_line, chars, "")
                if ch == "\r":
                    continue
                if ch == "\n":
                    return self._heredoc(start_line, chars)
                chars.append(ch)
                continue

            if not escaped and not in_backtick and ch == "\\":
                escaped = True
                continue

            if in_double or in_backtick:
                if in_double and escaped:
                    # Inside "..." only a quote can be escaped; keep any other backslash.
                    if ch != '"':
                        chars.append("\\")
                    escaped = False
                elif (in_double and ch == '"') or (in_backtick and ch == "`"):
                    return self._make(start_line, chars, ch)
                if ch == "\n":
                    self._newline()
                chars.append(ch)
                continue

            if ch in GO_SPACE_CHARS:
                if ch == "\r":
                    continue
                if ch == "\n":
                    if escaped:
                        # A continued line: later tokens count as being on this line.
                        self.pending_lines += 1
                        escaped = False
                    else:
                        self._newline()
                    in_comment = False
                if chars:
                    return self._make(start_line, chars, "")
                continue

            if ch == "#" and not chars:
                in_comment = True
            if in_comment:
                continue

            if not chars:
                start_line = self.line
                if ch == '"':
                    in_double = True
                    continue
                if ch == "`":
                    in_backtick = True
                    continue

            if escaped:
                if ch == "<":
                    heredoc_escaped = True  # `\<<` is a literal `<<`
                else:
                    chars.append("\\")
                escaped = False
            chars.append(ch)

        if chars:
            # End of input ends the token, even an unterminated quoted one (which
            # then counts as unquoted, like Caddy's).
            return self._make(start_line, chars, "")
        return None

    def _heredoc(self, start_line: int, opening: list[str]) -> Token | None:
        """Read a heredoc body after its `<<MARKER` line; the cursor is past the newline."""
        if len(opening) == 2:
            raise self._error(
                f"missing opening heredoc marker on line #{self.line}; must contain only "
                "alphanumeric characters, dashes and underscores; got empty string",
                self.line,
            )
        if opening[2] == "<":
            raise self._error(
                f"too many '<' for heredoc on line #{self.line}; only use two, for example <<END",
                self.line,
            )
        marker = "".join(opening[2:])
        if not _HEREDOC_MARKER.fullmatch(marker):
            raise self._error(
                f"heredoc marker on line #{self.line} must contain only alphanumeric "
                f"characters, dashes and underscores; got '{marker}'",
                self.line,
            )
        self.pending_lines += 1

        # The body ends at the first occurrence of the marker, wherever it is: Caddy
        # checks after every character whether the text read so far ends with it.
        text = self.text
        body_start = self.pos
        if body_start >= len(text):
            # Caddy drops a heredoc opened on the last line without a body, silently.
            return None
        found = text.find(marker, body_start)
        if found < 0:
            self.pending_lines += text.count("\n", body_start)
            self.pos = len(text)
            raise self._error(
                f"incomplete heredoc <<{marker} on line #{self.line + self.pending_lines}, "
                f"expected ending marker {marker}",
                self.line + self.pending_lines,
            )
        body_end = found + len(marker)
        raw = text[body_start:body_end]
        self.pending_lines += raw.count("\n")
        self.pos = body_end
        value = self._strip_heredoc_indent(raw, marker)
        self.line += self.pending_lines
        self.pending_lines = 0
        return Token(
            file=self.filename,
            line=start_line,
            text=value,
            was_quoted="<",
            heredoc_marker=marker,
        )

    def _strip_heredoc_indent(self, raw: str, marker: str) -> str:
        """Remove the closing marker's indentation from every line of the body."""
        last_newline = raw.rfind("\n")
        padding = raw[last_newline + 1 : len(raw) - len(marker)]
        lines = raw[: last_newline + 1].split("\n")[:-1]
        out: list[str] = []
        for index, line_text in enumerate(lines):
            if line_text in ("", "\r"):
                out.append("")
                continue
            if not line_text.startswith(padding):
                line_no = self.line + index + 1
                raise self._error(
                    f"mismatched leading whitespace in heredoc <<{marker} on line "
                    f"#{line_no} [{line_text.rstrip(chr(13) + chr(10))}], expected "
                    f"whitespace [{padding}] to match the closing marker",
                    line_no,
                )
            out.append(line_text[len(padding) :].replace("\r", ""))
        return "\n".join(out)
