"""Property tests: the lexer and parser fail only with ConfigError, and always finish."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.caddyfile.lexer import tokenize
from config.caddyfile.parser import parse
from config.errors import ConfigError

# Pieces that reach the interesting corners: braces, quotes, heredocs, snippets,
# imports with arguments and blocks, env vars, comments, line continuations.
_PIECES = [
    "{",
    "}",
    "{}",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\\",
    "\\\n",
    '"',
    "`",
    "#",
    ",",
    "<<",
    "<<EOF\n",
    "EOF",
    "<<<",
    "\ufeff",
    "\x1f",
    "\xa0",
    "import",
    "import ",
    "(s)",
    "(t)",
    "&(r)",
    "s",
    "t",
    "@m",
    "a.com",
    ":80",
    "respond",
    "{args[0]}",
    "{args[:]}",
    "{args[1:]}",
    "{args.0}",
    "{block}",
    "{blocks.k}",
    "k",
    "{$PP_PROP}",
    "{$PP_PROP:x y}",
    "{env.X}",
    "missing.conf",
    "*.conf",
]

caddyfile_like = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.text(max_size=4)), max_size=40
).map("".join)
any_text = st.one_of(st.text(max_size=200), caddyfile_like)


@pytest.fixture()
def in_empty_dir(tmp_path: Path) -> Iterator[Path]:
    """Relative imports in generated input must only ever see an empty directory."""
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


@settings(max_examples=400, deadline=2000)
@given(any_text)
def test_tokenize_raises_only_config_error(text: str) -> None:
    try:
        tokens = tokenize(text, "Caddyfile")
    except ConfigError as exc:
        assert exc.file == "Caddyfile"
        assert exc.line is not None and exc.line >= 1
        return
    lines = [t.line for t in tokens]
    assert lines == sorted(lines)  # tokens come in order
    assert all(t.file == "Caddyfile" for t in tokens)


@settings(
    max_examples=400,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(any_text)
def test_parse_raises_only_config_error(in_empty_dir: Path, text: str) -> None:
    try:
        blocks = parse("Caddyfile", text)
    except ConfigError:
        return
    for block in blocks:
        assert block.keys or block.segments
        assert all(segment for segment in block.segments)
