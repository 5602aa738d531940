"""The Caddyfile parser: tokens grouped into server blocks, with imports and snippets done.

`parse(filename, text)` does what Caddy's `caddyfile.Parse` does
(caddyconfig/caddyfile/parse.go), with the same error messages:

1. `{$VAR}` / `{$VAR:default}` are replaced in the raw text (see envvars.py);
2. the text is lexed (see lexer.py);
3. tokens are grouped into server blocks: keys (site addresses, separated by spaces
   and/or trailing commas), then segments (one per directive line, with its block).
   A block without keys is the global options block. A single site may omit braces.
   `(name) { ... }` defines a snippet (not a server block), `&(name) { ... }` a named
   route (kept, with `is_named_route`);
4. `import` lines are replaced by the tokens of a snippet or of files (relative to the
   importing file, globs allowed), with `{args[...]}` and `{block}` / `{blocks.key}`
   filled in; each imported token records the import chain in `Token.imports`.

The parser knows no directive: which words are directives, options or site addresses
is decided later, by the adapter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace

from config.caddyfile.dispenser import Dispenser
from config.caddyfile.envvars import replace_env_vars
from config.caddyfile.imports import (
    BadPatternError,
    ImportCycleError,
    ImportGraph,
    go_glob,
    go_join,
    parse_variadic,
    replace_args,
)
from config.caddyfile.lexer import GO_SPACE_CHARS, tokenize
from config.caddyfile.token import Token, is_next_on_new_line
from config.errors import ConfigError

log = logging.getLogger("pyproxy.caddyfile")

Segment = list[Token]


@dataclass
class ServerBlock:
    """Keys (site addresses, or the snippet/route name) and the directive segments."""

    keys: list[Token] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    has_braces: bool = False
    is_named_route: bool = False

    def key_texts(self) -> list[str]:
        return [key.text for key in self.keys]

    def directive_names(self) -> list[str]:
        """The first token of every segment, in order (duplicates kept)."""
        return [segment[0].text for segment in self.segments if segment]

    def dispense_directive(self, name: str) -> Dispenser:
        """A Dispenser over every segment of directive `name`, one after the other."""
        tokens = [tok for seg in self.segments if seg and seg[0].text == name for tok in seg]
        return Dispenser(tokens)


def parse(filename: str, text: str) -> list[ServerBlock]:
    """Parse Caddyfile `text` read from `filename` into server blocks (snippets removed).

    Raises ConfigError with Caddy's wording; `file` and `line` say where.
    """
    expanded = replace_env_vars(text)
    if not expanded:
        # Caddy's lexer fails to read the first character of empty input and reports
        # that error as is.
        raise ConfigError("EOF", filename)
    return _Parser(tokenize(expanded, filename)).parse_all()


def _is_snippet_key(text: str) -> bool:
    return text.startswith("(") and text.endswith(")")


class _Parser:
    """Walks the token list with a Dispenser, splicing imports in as it meets them.

    `depth` is the brace depth inside the current directive; it is separate from the
    Dispenser's own nesting, which only `import ... { }` blocks use.
    """

    def __init__(self, tokens: list[Token]) -> None:
        self.d = Dispenser(tokens)
        self.block = ServerBlock()
        self.eof = False
        self.snippets: dict[str, list[Token]] = {}
        self.depth = 0
        self.graph = ImportGraph()

    def parse_all(self) -> list[ServerBlock]:
        blocks: list[ServerBlock] = []
        while self.d.next():
            self.block = ServerBlock()
            self._begin()
            if self.block.keys or self.block.segments:
                blocks.append(self.block)
            if self.depth > 0:
                raise self.d.eof_err()
        return blocks

    def _begin(self) -> None:
        d = self.d
        if not d.tokens:
            return
        self._addresses()
        if self.eof:
            return  # the file was only a line of addresses

        keys = self.block.keys
        if len(keys) == 1 and keys[0].text.startswith("&(") and keys[0].text.endswith(")"):
            # The route's one key is a copy of the opening brace token named after the route.
            name_token = replace(d.token(), text=keys[0].text[2:].removesuffix(")"))
            self.block.keys = [name_token]
            self.block.is_named_route = True
            self.block.segments = [[name_token, *self._block_tokens(keep_braces=True)]]
            return

        if len(keys) == 1 and _is_snippet_key(keys[0].text):
            name = keys[0].text[1:].removesuffix(")")
            if name in self.snippets:
                raise d.err(f"redeclaration of previously declared snippet {name}")
            # Tokens remember their snippet, so that import cycles are tracked per snippet.
            self.snippets[name] = [
                replace(tok, snippet_name=name) for tok in self._block_tokens(keep_braces=False)
            ]
            self.block.keys = []
            return

        self._block_contents()

    def _addresses(self) -> None:
        d = self.d
        expecting_another = False
        while True:
            value = d.val()
            token = d.token()

            if value.startswith("@"):
                raise d.err(
                    "request matchers may not be defined globally, they must be in a "
                    f"site block; found {value}"
                )

            if value == "import" and d.is_new_line():
                self._do_import(0)
                continue

            if token.is_open_brace():
                if expecting_another:
                    raise d.err(
                        f"Expected another address but had '{value}' - check for extra comma"
                    )
                self.block.has_braces = True
                break

            if value.endswith("{") and not token.was_quoted:
                raise d.err(
                    f"Site addresses cannot end with a curly brace: '{value}' - put a space "
                    "between the token and the brace"
                )

            if value:  # `""` gives an empty token, which is no address
                # A trailing comma announces another address, maybe on the next line.
                expecting_another = value.endswith(",")
                if expecting_another:
                    value = value[:-1]
                if "," in value:
                    raise d.err(
                        f"Site addresses cannot contain a comma ',': '{value}' - put a space "
                        "after the comma to separate site addresses"
                    )
                if value:  # a lone "," between spaces leaves nothing
                    self.block.keys.append(replace(token, text=value))

            has_next = d.next()
            if expecting_another and not has_next:
                raise d.eof_err()
            if not has_next:
                self.eof = True
                break
            if not expecting_another and d.is_new_line():
                break

    def _block_contents(self) -> None:
        opened = self._open_brace_error() is None
        if not opened:
            self.d.cursor -= 1  # a single site needs no braces
        self._directives()
        if opened and not self.d.token().is_close_brace():
            raise self.d.syntax_err("}")

    def _directives(self) -> None:
        d = self.d
        while d.next():
            if d.token().is_close_brace():
                break  # end of the server block
            if d.val() == "import":
                self._do_import(1)
                d.cursor -= 1  # the loop's next() lands on the first imported token
                continue
            self._directive()

    def _directive(self) -> None:
        """Collect one segment: the directive, its arguments and any block it opens."""
        d = self.d
        segment = [d.token()]
        while d.next():
            token = d.token()
            if token.is_open_brace():
                self.depth += 1
                if not d.is_next_on_new_line():
                    raise d.err("Unexpected next token after '{' on same line")
                if d.is_new_line():
                    raise d.err(
                        "Unexpected '{' on a new line; did you mean to place the '{' on "
                        "the previous line?"
                    )
            elif token.text == "{}" and not token.was_quoted:
                if d.is_next_on_new_line():
                    raise d.err("Unexpected '{}' at end of line")
            elif d.is_new_line() and self.depth == 0:
                d.cursor -= 1  # read one token too far: it starts the next segment
                break
            elif token.is_close_brace() and self.depth > 0:
                self.depth -= 1
            elif token.is_close_brace():
                raise d.err("Unexpected '}' because no matching opening brace")
            elif token.text == "import" and d.is_new_line():
                self._do_import(1)
                d.cursor -= 1
                continue
            segment.append(d.token())
        self.block.segments.append(segment)
        if self.depth > 0:
            raise d.eof_err()

    def _open_brace_error(self) -> ConfigError | None:
        d = self.d
        if d.token().is_open_brace():
            return None
        if self._looks_like_global_options_after_imported_snippets():
            return d.err(
                "global options block must appear before import directives; move the "
                "global options block to the top of the Caddyfile"
            )
        return d.syntax_err("{")

    def _looks_like_global_options_after_imported_snippets(self) -> bool:
        keys = self.block.keys
        if self.d.val() != "import" or not keys:
            return False
        return all(_is_snippet_key(key.text) for key in keys)

    def _block_tokens(self, keep_braces: bool) -> list[Token]:
        """Everything up to the matching close brace, for later replay."""
        d = self.d
        error = self._open_brace_error()
        if error is not None:
            raise error
        nesting = 1
        tokens: list[Token] = [d.token()] if keep_braces else []
        while d.next():
            token = d.token()
            if token.is_close_brace():
                nesting -= 1
                if nesting == 0:
                    if keep_braces:
                        tokens.append(token)
                    break
            if token.is_open_brace():
                nesting += 1
            tokens.append(token)
        if nesting != 0:
            raise d.syntax_err("}")
        return tokens

    # -- import ------------------------------------------------------------------------------

    def _do_import(self, nesting: int) -> None:
        """Replace the `import` line (and its block) by the imported tokens.

        Afterwards the cursor is where Caddy leaves it: on the first imported token when
        the tokens before the import are kept as they were.
        """
        d = self.d
        if not d.next_arg():
            raise d.arg_err()
        pattern = d.val()
        if not pattern:
            raise d.err("Import requires a non-empty filepath")
        args = d.remaining_args()

        block_tokens: list[Token] = []
        outer = d.nesting
        while d.next_block(outer):
            block_tokens.append(d.token())
        block_mapping = self._block_mapping(block_tokens)

        # Like Caddy, this removes the import line's tokens but not the block's braces:
        # two spent tokens stay behind the cursor when the import had a block.
        cut_start = d.cursor - 1 - len(args) - len(block_tokens)
        cut_end = d.cursor + 1

        nodes: list[str] = []
        imported: list[Token]
        if pattern in self.snippets:
            imported = self.snippets[pattern]
            if imported:
                nodes.append(f"{imported[0].file}:{imported[0].snippet_name}")
        else:
            nodes, imported = self._import_files(pattern)

        here = d.token()
        node_name = here.file + (f":{here.snippet_name}" if here.snippet_name else "")
        self.graph.add_nodes([node_name, *nodes])
        try:
            self.graph.add_edges(node_name, nodes)
        except ImportCycleError as exc:
            self.graph.remove_nodes(nodes)
            raise ConfigError(str(exc), here.file, here.line) from None

        spliced = _expand_imported(imported, here, nesting, args, block_tokens, block_mapping)
        d.tokens[cut_start:cut_end] = spliced
        d.cursor -= len(args) + len(block_tokens) + 1

    def _block_mapping(self, block_tokens: list[Token]) -> dict[str, list[Token]]:
        """`import x { key args... { ... } }` → {"key": [args..., block tokens...]}."""
        mapping: dict[str, list[Token]] = {}
        if not block_tokens:
            return mapping
        bd = Dispenser(list(block_tokens))
        while bd.next():
            key = bd.val()
            if bd.token().is_open_brace():
                raise self.d.err("anonymous blocks are not supported")
            values = bd.remaining_args_as_tokens()
            inner = bd.nesting
            while bd.next_block(inner):
                values.append(bd.token())
            mapping[key] = values
        return mapping

    def _import_files(self, pattern: str) -> tuple[list[str], list[Token]]:
        """The files `pattern` names (relative to the importing file) and their tokens."""
        d = self.d
        if os.path.isabs(pattern):
            glob_pattern = pattern
        else:
            importer = os.path.abspath(d.file())
            glob_pattern = go_join(os.path.dirname(importer), pattern)
        if (
            glob_pattern.count("*") > 1
            or glob_pattern.count("?") > 1
            or ("[" in glob_pattern and "]" in glob_pattern)
        ):
            # Caddy's limit: patterns with several wildcards can take very long (#2096).
            raise d.err(
                f"Glob pattern may only contain one wildcard (*), but has others: {glob_pattern}"
            )
        try:
            matches = go_glob(glob_pattern)
        except BadPatternError as exc:
            raise d.err(f"Failed to use import pattern {pattern}: {exc}") from None
        if not matches:
            if any(c in glob_pattern for c in "*?[]"):
                log.warning("No files matching import glob pattern: %s", pattern)
            else:
                raise d.err(f"File to import not found: {pattern}")
        elif glob_pattern.rsplit("/", 1)[-1].startswith("*"):
            # `dir/*` skips dot files (Caddy #5295); `dir/.*` still reads them.
            matches = [m for m in matches if not m.rsplit("/", 1)[-1].startswith(".")]

        tokens: list[Token] = []
        for path in matches:
            tokens.extend(self._import_file(path))
        return matches, tokens

    def _import_file(self, path: str) -> list[Token]:
        d = self.d
        try:
            with open(path, "rb") as f:
                data = f.read()
        except IsADirectoryError:
            raise d.err(f"Could not import {path}: is a directory") from None
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise d.err(f"Could not import {path}: open {path}: {reason}") from None
        text = data.decode("utf-8", errors="replace")
        if all(ch in GO_SPACE_CHARS for ch in text):
            log.warning("Import file is empty: %s", path)
            return []
        expanded = replace_env_vars(text)
        if not expanded:
            # Only env vars that all came out empty: Caddy's lexer reports EOF.
            raise d.err(f"Could not read tokens while importing {path}: EOF")
        try:
            tokens = tokenize(expanded, path)
        except ConfigError as exc:
            raise d.err(f"Could not read tokens while importing {path}: {exc}") from None
        # Imported tokens name their file by absolute path (Caddy #1892).
        absolute = os.path.abspath(path)
        for token in tokens:
            token.file = absolute
        return tokens


def _expand_imported(
    imported: list[Token],
    import_token: Token,
    nesting: int,
    args: list[str],
    block_tokens: list[Token],
    block_mapping: dict[str, list[Token]],
) -> list[Token]:
    """Copies of the imported tokens with the import recorded and placeholders filled in.

    Snippet definitions inside imported files are copied untouched (their `{block}` and
    `{args[...]}` belong to their own later imports). They are recognised the way Caddy
    does it, naively: a `(name)` token starting a line at depth 0, then `{` right after.
    """
    where = f"{import_token.file}:{import_token.line}"
    out: list[Token] = []
    in_snippet = False
    snippet_name_seen = False
    index = 0  # position of the token on its line
    for i, original in enumerate(imported):
        label = (
            f"{where} (import {original.snippet_name})"
            if original.snippet_name
            else f"{where} (import)"
        )
        token = replace(original, imports=(*original.imports, label))

        if not in_snippet and nesting == 0:
            if i == 0 or not out or is_next_on_new_line(out[-1], token):
                index = 0
            else:
                index += 1
            if index == 0 and len(token.text) >= 3 and _is_snippet_key(token.text):
                snippet_name_seen = True

        if token.is_open_brace():
            nesting += 1
            if index == 1 and snippet_name_seen and nesting == 1:
                in_snippet = True
                snippet_name_seen = False
        elif token.is_close_brace():
            nesting -= 1
            if nesting == 0 and in_snippet:
                in_snippet = False

        text = token.text
        if text == "{block}" or (text.startswith("{blocks.") and text.endswith("}")):
            if in_snippet:
                out.append(token)
            elif text == "{block}":
                out.extend(replace(t) for t in block_tokens)
            else:
                key = text[:-1].removeprefix("{blocks.")
                out.extend(replace(t) for t in block_mapping.get(key, ()))
            continue

        if in_snippet:
            out.append(token)
            continue

        variadic, start, end = parse_variadic(token, len(args))
        if variadic:
            out.extend(replace(token, text=arg) for arg in args[start:end])
        else:
            token.text = replace_args(text, args)
            out.append(token)
    return out
