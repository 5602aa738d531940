"""What `import` needs besides the parser itself: argument placeholders, the import
graph (cycle detection) and Go-compatible file globbing.

Behaviour follows Caddy's caddyconfig/caddyfile/importargs.go and importgraph.go:

- `{args[N]}` inside a token is replaced by the N-th import argument (`{args.N}` is the
  deprecated spelling); a token that is exactly `{args[a:b]}` expands to one token per
  argument in that range. Placeholders that do not resolve are left as they are.
- Every import adds edges `importer -> imported` to a graph; an edge that would close a
  cycle is an error (`a cycle of imports exists between A and B`).
- Import patterns are globbed like Go's `filepath.Glob`: `*` and `?` never match `/`,
  `*` matches dot files, `\\` escapes, and a malformed pattern is an error.
"""

from __future__ import annotations

import logging
import os
import re
import stat

from config.caddyfile.token import Token

log = logging.getLogger("pyproxy.caddyfile")

_MAX_UNCLOSED_PLACEHOLDERS = 100  # Caddy gives up on absurd input (its issue #4170)
_GO_INT_MAX = 2**63 - 1

_DEPRECATED_ARGS_INDEX = re.compile(r"args\.(.+)")
_ARGS_INDEX = re.compile(r"args\[(.+)]")
_GO_DECIMAL = re.compile(r"[+-]?[0-9]+", re.ASCII)


def go_atoi(text: str) -> int | None:
    """Go's strconv.Atoi: optional sign and ASCII digits, within int64; else None."""
    if not _GO_DECIMAL.fullmatch(text):
        return None
    value = int(text, 10)
    if not -_GO_INT_MAX - 1 <= value <= _GO_INT_MAX:
        return None
    return value


# -- argument placeholders ------------------------------------------------------------------


def parse_variadic(token: Token, arg_count: int) -> tuple[bool, int, int]:
    """Whether the token is exactly `{args[start:end]}`, and the argument range it names.

    Bad indices (not numbers, out of bounds, start after end) make it no variadic
    placeholder at all, and the token is then kept as it is (Caddy logs a warning).
    """
    text = token.text
    if not text.startswith("{args[") or not text.endswith("]}"):
        return False, 0, 0
    arg_range = text[len("{args[") : -len("]}")]
    if not arg_range:
        _warn_placeholder(token, f"Placeholder {text} cannot have an empty index")
        return False, 0, 0
    start_text, found, end_text = arg_range.partition(":")
    if not found:
        return False, 0, 0  # a single index; the replacer handles it
    if "}" in start_text or "{" in end_text:
        return False, 0, 0  # several placeholders in one token, e.g. {args[0]}:{args[1]}
    start, end = 0, arg_count
    if start_text:
        parsed = go_atoi(start_text)
        if parsed is None:
            _warn_placeholder(token, f"Variadic placeholder {text} has an invalid start index")
            return False, 0, 0
        start = parsed
    if end_text:
        parsed = go_atoi(end_text)
        if parsed is None:
            _warn_placeholder(token, f"Variadic placeholder {text} has an invalid end index")
            return False, 0, 0
        end = parsed
    if start < 0 or start > end or end > arg_count:
        _warn_placeholder(
            token,
            f"Variadic placeholder {text} indices are out of bounds, "
            f"only {arg_count} argument(s) exist",
        )
        return False, 0, 0
    return True, start, end


def _warn_placeholder(token: Token, message: str) -> None:
    log.warning("%s (%s:%d, import chain %s)", message, token.file, token.line, token.imports)


def _arg_value(key: str, args: list[str]) -> str | None:
    """The value of placeholder `key` (without braces) if it names an import argument."""
    match = _DEPRECATED_ARGS_INDEX.search(key)
    if match:
        if match.group(0) != key:
            return None
        index = go_atoi(match.group(1))
        if index is None or index < 0 or index >= len(args):
            log.warning("Placeholder {%s} has an invalid or out of bounds index", key)
            return None
        log.warning("Placeholder {%s} deprecated, use {args[%s]} instead", key, match.group(1))
        return args[index]
    match = _ARGS_INDEX.search(key)
    if match:
        if match.group(0) != key:
            return None
        if ":" in match.group(1):
            log.warning("Variadic placeholder {%s} must be a token on its own", key)
            return None
        index = go_atoi(match.group(1))
        if index is None or index < 0 or index >= len(args):
            log.warning("Placeholder {%s} has an invalid or out of bounds index", key)
            return None
        return args[index]
    return None


def replace_args(text: str, args: list[str]) -> str:
    """Replace the argument placeholders in `text`, keeping every other placeholder.

    This is Caddy's `Replacer.ReplaceKnown` with only the args provider, including its
    side effects on imported tokens: `\\{` and `\\}` lose their backslash, and a token
    with more than 100 unclosed placeholders becomes empty.
    """
    if "{" not in text and "}" not in text:
        return text
    out: list[str] = []
    last_written = 0
    unclosed = 0
    length = len(text)
    i = 0
    while i < length:
        ch = text[i]
        if i > 0 and text[i - 1] == "\\" and ch in "{}":
            out.append(text[last_written : i - 1])
            last_written = i
            i += 1
            continue
        if ch != "{":
            i += 1
            continue
        if unclosed > _MAX_UNCLOSED_PLACEHOLDERS:
            return ""
        end = text.find("}", i)
        if end < 0:
            unclosed += 1
            i += 1
            continue
        # the placeholder ends at the first closing brace that is not escaped
        while 0 < end < length - 1 and text[end - 1] == "\\":
            end = text.find("}", end + 1)
            if end < 0:
                break
        if end < 0:
            unclosed += 1
            i += 1
            continue
        out.append(text[last_written:i])
        value = _arg_value(text[i + 1 : end], args)
        if value is None:
            last_written = i
            i += 1
            continue
        out.append(value)
        i = end + 1
        last_written = i
    out.append(text[last_written:])
    return "".join(out)


# -- the import graph -------------------------------------------------------------------------


class ImportCycleError(Exception):
    """An import edge would close a cycle."""


class ImportGraph:
    """Directed graph of `file` and `file:snippet` nodes, one edge per import."""

    __slots__ = ("edges", "nodes")

    def __init__(self) -> None:
        self.nodes: set[str] = set()
        self.edges: dict[str, list[str]] = {}

    def add_nodes(self, names: list[str]) -> None:
        self.nodes.update(names)

    def remove_nodes(self, names: list[str]) -> None:
        for name in names:
            self.nodes.discard(name)

    def add_edges(self, source: str, targets: list[str]) -> None:
        for target in targets:
            self.add_edge(source, target)

    def add_edge(self, source: str, target: str) -> None:
        if source not in self.nodes or target not in self.nodes:
            raise ImportCycleError("one of the nodes does not exist")
        if self._reaches(target, source):
            raise ImportCycleError(f"a cycle of imports exists between {source} and {target}")
        successors = self.edges.setdefault(source, [])
        if target not in successors:
            successors.append(target)

    def _reaches(self, start: str, goal: str) -> bool:
        """Whether `goal` can be reached from `start` by following at least one edge."""
        seen: set[str] = set()
        stack = list(self.edges.get(start, ()))
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            stack.extend(self.edges.get(node, ()))
        return goal in seen


# -- Go-compatible globbing -------------------------------------------------------------------


class BadPatternError(Exception):
    """The glob pattern is malformed (Go's filepath.ErrBadPattern)."""

    def __str__(self) -> str:
        return "syntax error in pattern"


_GLOB_META = frozenset("*?[\\")


def _has_meta(path: str) -> bool:
    return any(c in _GLOB_META for c in path)


def _component_regex(pattern: str) -> re.Pattern[str]:
    """A regex for one path component's pattern. Character classes are not supported:
    Caddy refuses patterns that contain both `[` and `]`, and a lone `[` is malformed."""
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            parts.append("[^/]*")
        elif ch == "?":
            parts.append("[^/]")
        elif ch == "[":
            raise BadPatternError()
        elif ch == "\\":
            i += 1
            if i >= len(pattern):
                raise BadPatternError()
            parts.append(re.escape(pattern[i]))
        else:
            parts.append(re.escape(ch))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


def _split(path: str) -> tuple[str, str]:
    """Go's filepath.Split, with the directory part cleaned as Glob does."""
    cut = path.rfind("/") + 1
    directory, name = path[:cut], path[cut:]
    if directory == "":
        directory = "."
    elif directory != "/":
        directory = directory[:-1]
    return directory, name


def go_join(directory: str, name: str) -> str:
    """Go's filepath.Join (which cleans the result) for POSIX paths."""
    joined = os.path.normpath(f"{directory}/{name}" if directory else name)
    if joined.startswith("//"):
        joined = "/" + joined.lstrip("/")  # Go's Clean keeps a single leading slash
    return joined


def go_glob(pattern: str) -> list[str]:
    """Go's filepath.Glob on POSIX: sorted matches, dot files included.

    Raises BadPatternError for a malformed pattern, even when nothing could match.
    """
    for component in pattern.split("/"):
        _component_regex(component)  # validate the whole pattern up front, like Go
    if not _has_meta(pattern):
        try:
            os.lstat(pattern)
        except (OSError, ValueError):
            return []
        return [pattern]
    directory, name = _split(pattern)
    if not _has_meta(directory):
        return _glob_in(directory, name)
    matches: list[str] = []
    for parent in go_glob(directory):
        matches.extend(_glob_in(parent, name))
    return matches


def _glob_in(directory: str, name_pattern: str) -> list[str]:
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            return []
        names = sorted(os.listdir(directory))
    except (OSError, ValueError):
        return []
    regex = _component_regex(name_pattern)
    return [go_join(directory, n) for n in names if regex.fullmatch(n)]
