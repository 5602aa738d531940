"""Caddyfile formatter: the behaviour of `caddy fmt`, reimplemented.

The formatter works on characters, not on lexer tokens, so it can format files the lexer would
reject, and it is meant not to change what a file means. It owns all braces, line breaks and
indentation; words, comments, quoted strings, escapes, placeholders and heredoc bodies are copied
as written.

Rules it applies (matching caddyconfig/caddyfile/formatter.go at Caddy 0cf03d32f):

* leading/trailing whitespace is dropped and the result ends with exactly one newline;
* a block's contents are indented with one tab per level (at most 10 levels);
* runs of blank lines collapse to a single blank line;
* an opening ``{`` goes at the end of the line before it, after one space; a ``}`` goes on its
  own line; anything after a top-level ``}`` on the same line is moved one blank line down;
* ``{`` glued to the next character (``{$ENV}``, ``{host}``) is a placeholder, not a block;
* ``#`` outside quotes begins a comment that runs to the end of the line (even mid-word, unlike
  the lexer);
* ``"..."`` and ```...``` strings, ``\\``-escaped characters and heredoc bodies
  (``<<MARKER`` ... ``MARKER``) are kept verbatim;
* a ``{`` on its own line right after a top-level ``import`` line stays on its own line, so
  ``import`` lines may come before the global options block.

Output is byte-for-byte Caddy's, quirks included: like Caddy's, the result on some malformed input
(a line starting with ``\\``, an unclosed ``{`` at the end) is not a fixed point of formatting.
"""

from __future__ import annotations

import re
from enum import Enum, auto

__all__ = ["format_caddyfile", "is_go_space"]

# Go's unicode.IsSpace, which Caddy uses everywhere here. Python's str.isspace() differs: it also
# counts U+001C..U+001F, which Go treats as ordinary characters.
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)

# A heredoc marker is letters, digits, '_' and '-' (the lexer enforces the same rule).
_HEREDOC_MARKER = re.compile(r"[A-Za-z0-9_-]+")

# Caddy caps indentation so absurd inputs (thousands of '{') cannot blow the output up.
_MAX_NESTING = 10


def is_go_space(ch: str) -> bool:
    """Whether ``ch`` is whitespace by Go's ``unicode.IsSpace``."""
    return ch in _GO_SPACE


def _go_trim(text: str) -> str:
    """``bytes.TrimSpace`` on text: strip Go whitespace (not Python's) from both ends."""
    start, end = 0, len(text)
    while start < end and text[start] in _GO_SPACE:
        start += 1
    while end > start and text[end - 1] in _GO_SPACE:
        end -= 1
    return text[start:end]


class _Heredoc(Enum):
    CLOSED = auto()
    OPENING = auto()  # reading the marker after '<<'
    OPENED = auto()  # copying the body until the closing marker


class _Formatter:
    """One formatting pass. Each ``_on_*`` method handles one lexical situation and returns
    True when it consumed the character, so :meth:`feed` reads as a priority list."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.last = ""  # last character written ("" before any output)

        self.space = True  # current/previous input char was whitespace; start of input counts
        self.line_start = True  # output is at the start of a line (nothing but indentation yet)
        self.newlines = 0  # input newlines consumed since the last thing written

        # A '{' is held back until we know whether it opens a block (followed by whitespace)
        # or starts a placeholder (followed by a non-space character).
        self.brace_pending = False
        self.brace_written = False
        self.brace_after_space = False  # non-newline whitespace came before the '{'
        self.brace_own_line = False  # the '{' was the first thing on its line

        self.comment = False
        # Quote context: "" none, '"' in a double-quoted string, "`" in a backtick string,
        # '"`' a backtick inside a double-quoted string.
        self.quotes = ""
        self.escaped = False

        self.heredoc = _Heredoc.CLOSED
        self.heredoc_escaped = False  # '\<' seen in this word: '<<' after it is no heredoc
        self.marker: list[str] = []
        self.closing: list[str] = []  # sliding window over the heredoc body

        self.nesting = 0

        # Tracks whether the previous line was a top-level `import`, for the import rule.
        self.token: list[str] = []
        self.line_first_token = ""
        self.prev_line_top_import = False

    # -- output primitives -------------------------------------------------------------------

    def write(self, ch: str) -> None:
        self.out.append(ch)
        self.last = ch

    def indent(self) -> None:
        for _ in range(self.nesting):
            self.write("\t")

    def newline(self) -> None:
        self.write("\n")
        self.line_start = True

    def end_token(self) -> None:
        if self.token:
            if not self.line_first_token:
                self.line_first_token = "".join(self.token)
            self.token.clear()

    def end_line(self) -> None:
        self.end_token()
        if self.line_first_token:
            self.prev_line_top_import = self.nesting == 0 and self.line_first_token == "import"
        elif not (self.brace_pending and self.brace_own_line and not self.brace_written):
            # A blank line ends an import run, but a held-back '{' alone on its line does not.
            self.prev_line_top_import = False
        self.line_first_token = ""

    # -- the state machine -------------------------------------------------------------------

    def feed(self, ch: str) -> None:
        if self._on_heredoc_start(ch):
            return
        if self.heredoc is _Heredoc.OPENING and self._on_heredoc_marker(ch):
            return
        if self.heredoc is _Heredoc.OPENED and self._on_heredoc_body(ch):
            return
        if self.last == "<" and self.space:
            # A lone '<' word ended: the next '<' no longer starts a heredoc.
            self.space = False
        if self.comment:
            self._on_comment(ch)
            return
        if self._on_escape(ch):
            return
        if self._on_quoted(ch):
            return
        if ch in _GO_SPACE:
            self._on_space(ch)
            return
        self._on_regular(ch)

    def _on_heredoc_start(self, ch: str) -> bool:
        # '<<' at the start of a word, outside quotes and not escaped.
        if (
            self.quotes == ""
            and self.heredoc is _Heredoc.CLOSED
            and not self.heredoc_escaped
            and self.space
            and self.last == "<"
            and ch == "<"
        ):
            self.write(ch)
            self.heredoc = _Heredoc.OPENING
            self.space = False
            return True
        return False

    def _on_heredoc_marker(self, ch: str) -> bool:
        if ch == "\n":
            if self.marker and _HEREDOC_MARKER.fullmatch("".join(self.marker)):
                self.heredoc = _Heredoc.OPENED
                self.write(ch)
            else:
                # Not a valid marker: the '<<word' was an ordinary token.
                self.marker = []
                self.heredoc = _Heredoc.CLOSED
                self.newline()
            return True
        if ch in _GO_SPACE:
            # Whitespace before the end of the line: '<<word' is an ordinary token.
            self.marker = []
            self.heredoc = _Heredoc.CLOSED
            return False
        self.marker.append(ch)
        self.write(ch)
        return True

    def _on_heredoc_body(self, ch: str) -> bool:
        # Keep a window of the last len(marker)+1 characters: the marker then one whitespace.
        self.closing.append(ch)
        if len(self.closing) > len(self.marker) + 1:
            del self.closing[0]
        if ch in _GO_SPACE and self.closing[:-1] == self.marker:
            # Closing marker found; this whitespace is formatted like any other.
            self.marker = []
            self.closing = []
            self.heredoc = _Heredoc.CLOSED
            return False
        self.write(ch)
        if ch == "\n":
            self.closing.clear()
        return True

    def _on_comment(self, ch: str) -> None:
        if ch == "\n":
            self.comment = False
            self.space = True
            self.newline()
        else:
            self.write(ch)

    def _on_escape(self, ch: str) -> bool:
        if not self.escaped and ch == "\\":
            if self.space:
                self.write(" ")
                self.space = False
            self.write(ch)
            self.escaped = True
            return True
        if self.escaped:
            if ch == "<":
                self.heredoc_escaped = True
            self.write(ch)
            self.escaped = False
            return True
        return False

    def _on_quoted(self, ch: str) -> bool:
        """Track quote context; copy quoted characters verbatim. An opening '"' is not
        consumed: it is laid out like the first character of any word."""
        if ch == "`":
            self.quotes = {'"`': '"', "`": "", '"': '"`'}.get(self.quotes, "`")
        if self.quotes == '"':
            if ch == '"':
                self.quotes = ""
            self.write(ch)
            return True
        if ch == '"':
            if self.quotes == "" and self.space:
                self.quotes = '"'
            elif self.quotes == '"`':
                self.quotes = ""
        if "`" in self.quotes:
            if ch == "`" and self.space and not self.line_start:
                self.write(" ")
            self.write(ch)
            self.space = False
            return True
        return False

    def _on_space(self, ch: str) -> None:
        self.end_token()
        self.space = True
        self.heredoc_escaped = False
        if ch == "\n":
            self.end_line()
            self.newlines += 1

    def _on_regular(self, ch: str) -> None:
        space_before = self.space
        self.space = False

        if ch == "#":
            self.comment = True

        if self.brace_pending and space_before and not self.brace_written:
            self._emit_block_open()

        if ch == "{":
            self.end_token()
            self.brace_pending = True
            self.brace_after_space = space_before and not self.line_start
            self.brace_own_line = self.newlines > 0
            if self.brace_after_space and self.newlines == 0:
                self.write(" ")
            self.brace_written = False
            return

        if ch == "}" and (space_before or not self.brace_pending):
            self.end_token()
            if self.last != "\n":
                self.newline()
            if self.nesting > 0:
                self.nesting -= 1
            self.indent()
            self.write("}")
            self.newlines = 0
            return

        for _ in range(min(self.newlines, 2)):
            self.newline()
        self.newlines = 0
        if self.line_start:
            self.indent()
            if self.nesting == 0 and self.last == "}":
                # Blank line between top-level blocks.
                self.newline()
                self.newline()
        if not self.line_start and space_before:
            self.write(" ")
        if self.brace_pending and not self.brace_written:
            # '{' directly followed by a character: a placeholder such as {$ENV} or {host}.
            self.write("{")
            self.brace_written = True
        if space_before and ch == "<":
            # Might be the first half of '<<': remember we are at the start of a word.
            self.space = True
        self.token.append(ch)
        self.write(ch)
        self.line_start = False

    def _emit_block_open(self) -> None:
        """Write a held-back '{' that turned out to open a block, then start the block."""
        if self.nesting == 0 and self.last == "}":
            self.newline()
            self.newline()
        self.brace_pending = False
        if self.brace_own_line and self.prev_line_top_import:
            # `import ...` then '{' alone: keep the brace on its own line so the import is not
            # swallowed into the global options block's header.
            if self.last != "\n":
                self.newline()
            self.indent()
        elif self.line_start:
            self.indent()
        elif not self.brace_after_space or self.last not in _GO_SPACE:
            self.write(" ")
        self.write("{")
        self.brace_written = True
        self.brace_own_line = False
        self.newline()
        self.newlines = 0
        if self.nesting < _MAX_NESTING:
            self.nesting += 1


def format_caddyfile(text: str) -> str:
    """Format Caddyfile text the way ``caddy fmt`` does. Never raises; any text is accepted."""
    formatter = _Formatter()
    for ch in _go_trim(text):
        formatter.feed(ch)
    return _go_trim("".join(formatter.out)) + "\n"
