"""A cursor over a token list: how directives and options read their arguments and blocks.

It follows Caddy's `Dispenser` semantics (cursor starts before the first token,
`next_arg` stays on the line, `next_block` walks one nesting level) so that
directive parsers can be written from Caddy's documentation of each directive.
Errors it makes carry Caddy's wording and the token's file:line.
"""

from __future__ import annotations

from typing import Any

from config.caddyfile.token import Token, is_next_on_new_line
from config.errors import ConfigError

Segment = list[Token]


class Dispenser:
    """Walks tokens. All `next*` methods return whether the cursor moved to a valid token."""

    __slots__ = ("context", "cursor", "nesting", "tokens")

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.cursor = -1
        self.nesting = 0
        self.context: dict[str, Any] = {}

    # -- movement -----------------------------------------------------------------------------

    def next(self) -> bool:
        """Move to the next token, wherever it is."""
        if self.cursor < len(self.tokens) - 1:
            self.cursor += 1
            return True
        return False

    def prev(self) -> bool:
        """Move back one token; False when that leaves the cursor before the first token."""
        if self.cursor > -1:
            self.cursor -= 1
            return self.cursor > -1
        return False

    def next_arg(self) -> bool:
        """Move to the next token on the same line, unless it opens a block."""
        if not self._next_on_same_line():
            return False
        if self.token().is_open_brace():
            self.cursor -= 1
            return False
        return True

    def _next_on_same_line(self) -> bool:
        if self.cursor < 0:
            self.cursor += 1
            return True
        if self.cursor >= len(self.tokens) - 1:
            return False
        if not is_next_on_new_line(self.tokens[self.cursor], self.tokens[self.cursor + 1]):
            self.cursor += 1
            return True
        return False

    def next_line(self) -> bool:
        """Move to the next token only if it starts a new line."""
        if self.cursor < 0:
            self.cursor += 1
            return True
        if self.cursor >= len(self.tokens) - 1:
            return False
        if is_next_on_new_line(self.tokens[self.cursor], self.tokens[self.cursor + 1]):
            self.cursor += 1
            return True
        return False

    def next_block(self, initial_nesting: int) -> bool:
        """Iterate the tokens of a block that opens on the current line.

        Use as `while d.next_block(nesting): ...` with `nesting = d.nesting` taken
        before the loop; it stops (False) at the block's closing brace.
        """
        if self.nesting > initial_nesting:
            if not self.next():
                return False
            tok = self.token()
            if tok.is_close_brace() and not self._next_on_same_line():
                self.nesting -= 1
            elif tok.is_open_brace() and not self._next_on_same_line():
                self.nesting += 1
            return self.nesting > initial_nesting
        if not self._next_on_same_line():
            return False
        if not self.token().is_open_brace():
            self.cursor -= 1
            return False
        self.next()
        if self.token().is_close_brace():
            return False  # "{ }" opened and closed at once
        self.nesting += 1
        return True

    def reset(self) -> None:
        self.cursor = -1
        self.nesting = 0

    # -- values -------------------------------------------------------------------------------

    def token(self) -> Token:
        if 0 <= self.cursor < len(self.tokens):
            return self.tokens[self.cursor]
        return Token(file="", line=0, text="")

    def val(self) -> str:
        if 0 <= self.cursor < len(self.tokens):
            return self.tokens[self.cursor].text
        return ""

    def val_raw(self) -> str:
        """The value with its quotes put back (not for heredocs)."""
        tok = self.token()
        if tok.was_quoted and tok.was_quoted != "<":
            return tok.was_quoted + tok.text + tok.was_quoted
        return tok.text

    def scalar_val(self) -> Any:
        """The value as int, float or bool when it is an unquoted literal of that type."""
        if not 0 <= self.cursor < len(self.tokens):
            return None
        tok = self.tokens[self.cursor]
        if tok.was_quoted:
            return tok.text
        return parse_scalar(tok.text)

    def line(self) -> int:
        return self.token().line

    def file(self) -> str:
        return self.token().file

    def args(self, count: int) -> list[str] | None:
        """The next `count` arguments on this line, or None when there are fewer."""
        values = []
        for _ in range(count):
            if not self.next_arg():
                return None
            values.append(self.val())
        return values

    def all_args(self, count: int) -> list[str] | None:
        """Exactly `count` remaining arguments, or None."""
        values = self.args(count)
        if values is None:
            return None
        if self.next_arg():
            self.prev()
            return None
        return values

    def count_remaining_args(self) -> int:
        count = 0
        while self.next_arg():
            count += 1
        for _ in range(count):
            self.prev()
        return count

    def remaining_args(self) -> list[str]:
        values = []
        while self.next_arg():
            values.append(self.val())
        return values

    def remaining_args_raw(self) -> list[str]:
        values = []
        while self.next_arg():
            values.append(self.val_raw())
        return values

    def remaining_args_as_tokens(self) -> list[Token]:
        values = []
        while self.next_arg():
            values.append(self.token())
        return values

    def next_segment(self) -> Segment:
        """The current token, its arguments and its block (braces included), as a list."""
        segment = [self.token()]
        while self.next_arg():
            segment.append(self.token())
        opened = False
        nesting = self.nesting
        while self.next_block(nesting):
            if not opened:
                self.prev()
                segment.append(self.token())
                self.next()
                opened = True
            segment.append(self.token())
        if opened:
            segment.append(self.token())
        return segment

    def new_from_next_segment(self) -> Dispenser:
        return Dispenser(self.next_segment())

    def delete(self) -> list[Token]:
        """Remove the current token; the cursor moves back one."""
        if 0 <= self.cursor < len(self.tokens):
            del self.tokens[self.cursor]
            self.cursor -= 1
        return self.tokens

    def delete_n(self, amount: int) -> list[Token]:
        """Remove the current token and the `amount - 1` before it."""
        if amount > 0 and self.cursor >= amount - 1 and self.cursor < len(self.tokens):
            del self.tokens[self.cursor - (amount - 1) : self.cursor + 1]
            self.cursor -= amount
        return self.tokens

    def is_new_line(self) -> bool:
        """Whether the current token starts a line."""
        if self.cursor < 1:
            return True
        if self.cursor > len(self.tokens) - 1:
            return False
        return is_next_on_new_line(self.tokens[self.cursor - 1], self.tokens[self.cursor])

    def is_next_on_new_line(self) -> bool:
        if self.cursor < 0:
            return False
        if self.cursor >= len(self.tokens) - 1:
            return True
        return is_next_on_new_line(self.tokens[self.cursor], self.tokens[self.cursor + 1])

    # -- errors (Caddy's wording) -----------------------------------------------------------------

    def arg_err(self) -> ConfigError:
        if self.token().is_open_brace():
            return self.err("unexpected token '{', expecting argument")
        return self.err(f"wrong argument count or unexpected line ending after '{self.val()}'")

    def syntax_err(self, expected: str) -> ConfigError:
        # Current Caddy's SyntaxErr wording, except that an empty import chain is left out
        # (Caddy prints `import chain: ['']`, which reads like a stray list); with imports the
        # chain is named as Caddy names it.
        message = (
            f"syntax error: unexpected token '{self.val()}', expecting '{expected}', "
            f"at {self.file()}:{self.line()}"
        )
        if self.token().imports:
            message += " import chain: ['" + "','".join(self.token().imports) + "']"
        return ConfigError(message, self.file(), self.line())

    def eof_err(self) -> ConfigError:
        return self.err("unexpected EOF")

    def err(self, message: str) -> ConfigError:
        """An error at the current token: `message, at FILE:LINE`."""
        return self.wrap_err(message)

    def wrap_err(self, message: str | Exception) -> ConfigError:
        tok = self.token()
        suffix = f", at {tok.file}:{tok.line}"
        if tok.imports:
            suffix += " import chain ['" + "','".join(tok.imports) + "']"
        return ConfigError(f"{message}{suffix}", tok.file, tok.line)


def parse_scalar(text: str) -> Any:
    """Go's Atoi, then ParseFloat, then ParseBool, else the string (Caddy's ScalarVal)."""
    try:
        return int(text, 10)
    except ValueError:
        pass
    if text.strip() == text and text.lower() not in ("inf", "-inf", "+inf", "nan", "infinity"):
        try:
            return float(text.replace("_", "x") if "_" in text else text)
        except ValueError:
            pass
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return text
