"""Tests for the Caddyfile lexer: Caddy's own lexer vectors plus our own cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.caddyfile.lexer import is_go_space, tokenize
from config.errors import ConfigError

SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared"
LEXER_VECTORS = SHARED_DIR / "conformance" / "lexer_vectors.json"


def _load_vectors() -> list[Any]:
    if not LEXER_VECTORS.exists():
        return []
    vectors: list[Any] = json.loads(LEXER_VECTORS.read_text(encoding="utf-8"))
    return vectors


_VECTORS = _load_vectors()


@pytest.mark.skipif(not _VECTORS, reason="shared conformance vectors not available")
def test_vector_count() -> None:
    assert len(_VECTORS) == 50


@pytest.mark.skipif(not _VECTORS, reason="shared conformance vectors not available")
@pytest.mark.parametrize("vector", _VECTORS, ids=[v["name"] for v in _VECTORS])
def test_lexer_vector(vector: dict[str, Any]) -> None:
    if "error" in vector:
        with pytest.raises(ConfigError) as info:
            tokenize(vector["input"], "")
        if vector["error"] is not True:
            assert str(info.value) == vector["error"]
    else:
        tokens = tokenize(vector["input"], "")
        assert [(t.line, t.text) for t in tokens] == [
            (t["line"], t["text"]) for t in vector["tokens"]
        ]


def texts(source: str) -> list[str]:
    return [t.text for t in tokenize(source, "Caddyfile")]


def test_empty_input_has_no_tokens() -> None:
    assert tokenize("", "Caddyfile") == []
    assert tokenize("\ufeff", "Caddyfile") == []
    assert tokenize("   \n\t# only a comment\n", "Caddyfile") == []


def test_filename_and_lines_recorded() -> None:
    tokens = tokenize("a b\n\nc", "site/Caddyfile")
    assert [(t.file, t.line, t.text) for t in tokens] == [
        ("site/Caddyfile", 1, "a"),
        ("site/Caddyfile", 1, "b"),
        ("site/Caddyfile", 3, "c"),
    ]


def test_quote_kinds_recorded() -> None:
    tokens = tokenize('bare "dq" `bt` <<END\nhd\nEND', "Caddyfile")
    assert [t.was_quoted for t in tokens] == ["", '"', "`", "<"]
    assert tokens[3].heredoc_marker == "END"
    assert tokens[3].text == "hd"


def test_braces_are_plain_tokens_unless_whole() -> None:
    tokens = tokenize('a { "{" } {x}', "Caddyfile")
    assert [t.text for t in tokens] == ["a", "{", "{", "}", "{x}"]
    assert tokens[1].is_open_brace()
    assert not tokens[2].is_open_brace()
    assert tokens[3].is_close_brace()


def test_comment_only_at_token_start() -> None:
    assert texts("a#b # comment\nc") == ["a#b", "c"]


def test_go_whitespace_not_python_whitespace() -> None:
    # U+001F is whitespace to Python but not to Go's unicode.IsSpace.
    assert texts("a\x1fb c") == ["a\x1fb", "c"]
    assert not is_go_space("\x1f")
    # U+00A0 and U+3000 separate tokens in Go.
    assert texts("a\xa0b\u3000c") == ["a", "b", "c"]


def test_carriage_return_ignored_outside_quotes_only() -> None:
    assert texts("a\r\nb") == ["a", "b"]
    assert texts('"x\r\ny"') == ["x\r\ny"]


def test_only_escaped_quote_in_double_quotes() -> None:
    assert texts(r'"a\"b\c"') == ['a"b\\c']


def test_backticks_are_raw() -> None:
    assert texts(r"`a\`") == ["a\\"]


def test_unterminated_quote_takes_rest_of_input() -> None:
    tokens = tokenize('a "b c\nd', "Caddyfile")
    assert [t.text for t in tokens] == ["a", "b c\nd"]
    assert tokens[1].was_quoted == ""


def test_line_continuation_keeps_line_number() -> None:
    tokens = tokenize("a \\\nb\nc", "Caddyfile")
    assert [(t.line, t.text) for t in tokens] == [(1, "a"), (1, "b"), (3, "c")]


def test_multiline_quote_advances_line() -> None:
    tokens = tokenize('a "x\ny"\nb', "Caddyfile")
    assert [(t.line, t.text) for t in tokens] == [(1, "a"), (1, "x\ny"), (3, "b")]


def test_heredoc_strips_closing_indent() -> None:
    tokens = tokenize("respond <<HTML\n\t\t<p>\n\t\t  x\n\n\t\tHTML 200\nnext", "Caddyfile")
    assert [(t.line, t.text) for t in tokens] == [
        (1, "respond"),
        (1, "<p>\n  x\n"),
        (5, "200"),
        (6, "next"),
    ]


def test_heredoc_extra_indentation_kept() -> None:
    body = tokenize("respond <<END\n        line1\n        line2\n  END\n", "Caddyfile")[1]
    assert body.text == "      line1\n      line2"


def test_heredoc_crlf() -> None:
    assert texts("a <<E\r\n x\r\n E\r\n") == ["a", "x"]


def test_escaped_heredoc_is_literal() -> None:
    assert texts("a \\<<EOF\nb") == ["a", "<<EOF", "b"]


def test_heredoc_at_end_of_input_without_body_is_dropped() -> None:
    assert texts("a <<EOF\n") == ["a"]


@pytest.mark.parametrize(
    ("source", "message", "line"),
    [
        (
            ":80\n\nhandle {\n    respond <<EOF\n    Hello\n# missing EOF marker\n}\n",
            "mismatched leading whitespace in heredoc <<EOF on line #5 [    Hello], "
            "expected whitespace [# missing ] to match the closing marker",
            5,
        ),
        (
            ":80\n\nhandle {\n    respond <<END!\n    Hello\n    END!\n}\n",
            "heredoc marker on line #4 must contain only alphanumeric characters, "
            "dashes and underscores; got 'END!'",
            4,
        ),
        (
            ":80\n\nhandle {\n    respond <<<END\n    Hello\n    END\n}\n",
            "too many '<' for heredoc on line #4; only use two, for example <<END",
            4,
        ),
        (
            "a\nb <<\nc",
            "missing opening heredoc marker on line #2; must contain only alphanumeric "
            "characters, dashes and underscores; got empty string",
            2,
        ),
        (
            "a\nb <<EOF\nc\nd\n",
            "incomplete heredoc <<EOF on line #5, expected ending marker EOF",
            5,
        ),
    ],
)
def test_heredoc_errors(source: str, message: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        tokenize(source, "Caddyfile")
    assert str(info.value) == message
    assert info.value.file == "Caddyfile"
    assert info.value.line == line


def test_heredoc_marker_with_space_is_not_heredoc() -> None:
    assert texts("a << b") == ["a", "<<", "b"]


def test_backslash_quirks_match_caddy() -> None:
    # A backslash before a space is dropped but stays pending for the next token.
    assert texts("a \\ b") == ["a", "\\b"]
    # A backslash at the end of a comment continues the line, like anywhere else.
    tokens = tokenize("a # note \\\nb\nc", "Caddyfile")
    assert [(t.line, t.text) for t in tokens] == [(1, "a"), (1, "b"), (3, "c")]


def test_heredoc_ends_at_first_marker_occurrence() -> None:
    # The body ends wherever the marker first appears; what precedes it on that line
    # is the indentation every line must start with.
    assert texts("a <<END\n  yx\n  yEND z") == ["a", "x", "z"]
    assert texts("a <<END\nxxEND\nb") == ["a", "", "b"]
