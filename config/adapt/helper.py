"""What directive and global-option parsers receive and return, and where they register.

This mirrors the shape of Caddy's httpcaddyfile `Helper`/`ConfigValue`/`RegisterDirective`
so every directive module can be written against one small API:

- A *directive parser* takes a `Helper` (positioned before the directive's first token)
  and returns a list of `ConfigValue`s: routes (class "route"), bind addresses ("bind"),
  TLS values ("tls.connection_policy", "tls.cert_issuer", "tls.cert_loader", ...), etc.
- A *handler directive parser* returns one handler dict (JSON, with its "handler" key);
  the registry wraps it so the optional matcher token is extracted first and the result
  becomes a route `{"match": [...], "handle": [handler]}`.
- A *global option parser* takes a Dispenser positioned before the option name and the
  option's previous value (or None), and returns the new value.

JSON values are plain dicts/lists/str/int/float/bool. Like Go's `omitempty`, parsers leave
out empty/zero fields rather than emitting them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from config.caddyfile.dispenser import Dispenser
from config.caddyfile.token import Token
from config.errors import ConfigError

JSONDict = dict[str, Any]
MatcherSet = JSONDict  # {"path": [...], "host": [...], ...}: all must match


@dataclass
class ConfigValue:
    """One thing a directive contributes to its site (Caddy's ConfigValue)."""

    cls: str
    value: Any
    directive: str = ""


@dataclass
class Warning:
    file: str
    line: int
    message: str
    directive: str = ""


@dataclass
class GroupCounter:
    """Hands out `group0`, `group1`, ... for mutually exclusive `handle` blocks."""

    n: int = 0

    def next_group(self) -> str:
        name = f"group{self.n}"
        self.n += 1
        return name


@dataclass
class Helper:
    """A Dispenser over one directive's tokens plus the context a directive may need."""

    dispenser: Dispenser
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[Warning] = field(default_factory=list)
    matcher_defs: dict[str, MatcherSet] = field(default_factory=dict)
    parent_block_tokens: list[list[Token]] = field(default_factory=list)
    group_counter: GroupCounter = field(default_factory=GroupCounter)
    state: dict[str, Any] = field(default_factory=dict)
    block_state: dict[str, Any] = field(default_factory=dict)

    # Dispenser delegation, so parsers read like `h.next_arg()`, `h.val()`, `h.err(...)`.
    def __getattr__(self, name: str) -> Any:
        return getattr(self.dispenser, name)

    def option(self, name: str) -> Any:
        return self.options.get(name)

    def caddyfiles(self) -> list[str]:
        """Sorted names of the files the enclosing site block's tokens came from."""
        return sorted({tok.file for segment in self.parent_block_tokens for tok in segment})

    def warn(self, message: str) -> None:
        self.warnings.append(Warning(self.dispenser.file(), self.dispenser.line(), message))

    def matcher_token(self) -> tuple[MatcherSet | None, bool]:
        """Read the next argument as a matcher token (`*`, `/path`, `@name`) if it is one."""
        if not self.dispenser.next_arg():
            return None, False
        return matcher_set_from_token(self.dispenser.token(), self.matcher_defs)

    def extract_matcher_set(self) -> MatcherSet | None:
        """Take the matcher token (if any) out of the tokens and rewind the dispenser."""
        matcher_set, has_matcher = self.matcher_token()
        if has_matcher:
            self.dispenser.delete()
        self.dispenser.reset()
        return matcher_set

    def new_route(self, matcher_set: MatcherSet | None, handler: JSONDict) -> list[ConfigValue]:
        route: JSONDict = {}
        if matcher_set is not None:
            route["match"] = [matcher_set]
        route["handle"] = [handler]
        return [ConfigValue("route", route)]

    def group_routes(self, values: list[ConfigValue]) -> None:
        """Put the routes among `values` into one new group (when there are at least two)."""
        routes = [v for v in values if v.cls == "route"]
        if len(routes) < 2:
            return
        group = self.group_counter.next_group()
        for v in routes:
            v.value["group"] = group

    def with_dispenser(self, dispenser: Dispenser) -> Helper:
        return Helper(
            dispenser=dispenser,
            options=self.options,
            warnings=self.warnings,
            matcher_defs=self.matcher_defs,
            parent_block_tokens=self.parent_block_tokens,
            group_counter=self.group_counter,
            state=self.state,
            block_state=self.block_state,
        )


def matcher_set_from_token(
    tok: Token, matcher_defs: dict[str, MatcherSet]
) -> tuple[MatcherSet | None, bool]:
    """`*` matches all (no set), `/...` is a path matcher, `@name` a defined matcher."""
    if tok.text == "*":
        return None, True
    if tok.text.startswith("/"):
        return {"path": [tok.text]}, True
    if tok.text.startswith("@"):
        if tok.text not in matcher_defs:
            raise ConfigError(f"unrecognized matcher name: {tok.text}", tok.file, tok.line)
        return matcher_defs[tok.text], True
    return None, False


DirectiveParser = Callable[[Helper], list[ConfigValue]]
HandlerParser = Callable[[Helper], JSONDict]
GlobalOptionParser = Callable[[Dispenser, Any], Any]

DIRECTIVES: dict[str, DirectiveParser] = {}
GLOBAL_OPTIONS: dict[str, GlobalOptionParser] = {}


def register_directive(name: str, parser: DirectiveParser) -> None:
    if name in DIRECTIVES:
        raise RuntimeError(f"directive {name} registered twice")
    DIRECTIVES[name] = parser


def register_handler_directive(name: str, parser: HandlerParser) -> None:
    """Register a directive that makes one handler; matcher extraction and routing are added."""

    def parse(h: Helper) -> list[ConfigValue]:
        if not h.dispenser.next():
            raise h.dispenser.arg_err()
        matcher_set = h.extract_matcher_set()
        handler = parser(h)
        return h.new_route(matcher_set, handler)

    register_directive(name, parse)


def register_global_option(name: str, parser: GlobalOptionParser) -> None:
    if name in GLOBAL_OPTIONS:
        raise RuntimeError(f"global option {name} registered twice")
    GLOBAL_OPTIONS[name] = parser
