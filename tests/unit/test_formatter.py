"""Tests for the Caddyfile formatter (`config.caddyfile.formatter`) and `pyproxy fmt`.

Caddy's own formatter test table is checked from the shared conformance folder (never copied
into the repository); the other tests pin each formatting rule, idempotence on Caddyfile-like
text, and the command line behaviour of `caddy fmt`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.caddyfile.formatter import format_caddyfile, is_go_space
from proxy.cli import _fmt_decode, _fmt_line_diff

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO.parent / "shared" / "conformance"
VECTORS = CONFORMANCE / "formatter_vectors.json"


def _load_vectors() -> list[dict[str, Any]]:
    if not VECTORS.is_file():
        return []
    data: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


# -- Caddy's formatter test table ---------------------------------------------------------------


@pytest.mark.skipif(not VECTORS.is_file(), reason="shared conformance vectors not available")
@pytest.mark.parametrize("vector", _load_vectors(), ids=lambda v: str(v["name"]))
def test_caddy_formatter_vector(vector: dict[str, Any]) -> None:
    assert format_caddyfile(vector["input"]) == vector["expect"], vector["description"]


@pytest.mark.skipif(not VECTORS.is_file(), reason="shared conformance vectors not available")
def test_caddy_formatter_vectors_all_present() -> None:
    assert len(_load_vectors()) == 30


# -- one test per rule --------------------------------------------------------------------------


def test_indents_with_one_tab_per_level() -> None:
    src = "a {\n    b\n  c {\nd\n}\n}"
    assert format_caddyfile(src) == "a {\n\tb\n\tc {\n\t\td\n\t}\n}\n"


def test_trims_input_and_ends_with_one_newline() -> None:
    assert format_caddyfile("\n\n  a  \n\n\n") == "a\n"
    assert format_caddyfile("") == "\n"
    assert format_caddyfile(" \t\r\n") == "\n"


def test_collapses_blank_lines_to_one() -> None:
    assert format_caddyfile("a\n\n\n\nb") == "a\n\nb\n"
    # Blank lines right after '{' and right before '}' go entirely.
    assert format_caddyfile("a {\n\n\n\nb\n\n\n}") == "a {\n\tb\n}\n"


def test_one_space_before_open_brace() -> None:
    assert format_caddyfile("a{\nb\n}") == "a {\n\tb\n}\n"
    assert format_caddyfile("a   {\nb\n}") == "a {\n\tb\n}\n"
    assert format_caddyfile("a\t{\nb\n}") == "a {\n\tb\n}\n"


def test_open_brace_on_its_own_line_moves_up() -> None:
    assert format_caddyfile("a\n{\nb\n}") == "a {\n\tb\n}\n"


def test_close_brace_goes_on_its_own_line() -> None:
    assert format_caddyfile("a {\nb }") == "a {\n\tb\n}\n"
    assert format_caddyfile("a { b }") == "a {\n\tb\n}\n"


def test_text_after_top_level_close_brace_moves_down() -> None:
    assert format_caddyfile("a {\nb\n} c {\nd\n}") == "a {\n\tb\n}\n\nc {\n\td\n}\n"


def test_nesting_is_capped_at_ten_tabs() -> None:
    out = format_caddyfile("{\n" * 12 + "x")
    assert out.splitlines()[-1] == "\t" * 10 + "x"


def test_comments_are_kept_verbatim_and_indented() -> None:
    src = "a {\n   # hi   there {\nb   #  trailing { }\n}"
    assert format_caddyfile(src) == "a {\n\t# hi   there {\n\tb #  trailing { }\n}\n"


def test_hash_inside_a_word_starts_a_comment_like_caddy() -> None:
    # Caddy's formatter (unlike its lexer) treats any unquoted '#' as a comment start, so the
    # brace after it is left alone.
    assert format_caddyfile("a#b {\nc\n}") == "a#b {\nc\n}\n"


def test_double_quoted_strings_are_verbatim() -> None:
    src = 'respond "  {  } # x "   200'
    assert format_caddyfile(src) == 'respond "  {  } # x " 200\n'


def test_backtick_strings_are_verbatim() -> None:
    assert format_caddyfile("respond `a {b}   c`") == "respond `a {b}   c`\n"
    assert format_caddyfile("a {\nrespond `x\n  y`\n}") == "a {\n\trespond `x\n  y`\n}\n"


def test_escaped_characters_are_verbatim() -> None:
    assert format_caddyfile('a \\{  b \\"x') == 'a \\{ b \\"x\n'


def test_heredoc_body_is_verbatim() -> None:
    src = "a {\nrespond <<EOF\n    keep   this\n\n  { and } this\n    EOF   200\n}"
    want = "a {\n\trespond <<EOF\n    keep   this\n\n  { and } this\n    EOF 200\n}\n"
    assert format_caddyfile(src) == want


def test_heredoc_needs_a_valid_marker_at_end_of_line() -> None:
    # A space after the marker makes '<<EOF' an ordinary word.
    assert format_caddyfile("a <<EOF   b\n  c") == "a <<EOF b\nc\n"
    # An escaped '<' is not a heredoc either.
    assert format_caddyfile("a \\<<EOF\n   b") == "a \\<<EOF\nb\n"


def test_env_placeholders_stay_glued() -> None:
    assert format_caddyfile("{$HOST:localhost}   {\nb\n}") == "{$HOST:localhost} {\n\tb\n}\n"
    assert format_caddyfile("a {\n{$ENV}\n}") == "a {\n\t{$ENV}\n}\n"
    assert format_caddyfile("{host}{path} {\nb\n}") == "{host}{path} {\n\tb\n}\n"


def test_import_lines_before_global_options_keep_brace_on_own_line() -> None:
    src = "import a.caddy\nimport b.caddy\n{\ndebug\n}"
    assert format_caddyfile(src) == "import a.caddy\nimport b.caddy\n{\n\tdebug\n}\n"
    # Any other line before a lone '{' takes the brace.
    assert format_caddyfile("x\n{\ndebug\n}") == "x {\n\tdebug\n}\n"
    # Inside a block, `import` gets no special treatment.
    assert format_caddyfile("s {\nimport a\n{\nb\n}\n}") == "s {\n\timport a {\n\t\tb\n\t}\n}\n"


def test_crlf_and_go_whitespace() -> None:
    assert format_caddyfile("a {\r\n b\r\n}\r\n") == "a {\n\tb\n}\n"
    # NBSP is whitespace to Go; U+001F is not (Python's str.isspace() says it is).
    assert format_caddyfile("a\u00a0b") == "a b\n"
    assert format_caddyfile("a\x1fb") == "a\x1fb\n"
    assert is_go_space("\u3000") and not is_go_space("\x1c") and not is_go_space("\ufeff")


def test_bom_is_not_stripped() -> None:
    assert format_caddyfile("\ufeffa {\nb\n}") == "\ufeffa {\n\tb\n}\n"


# -- properties ---------------------------------------------------------------------------------

_WORDS = st.sampled_from(
    [
        "example.com",
        ":8080",
        "reverse_proxy",
        "localhost:9000",
        "respond",
        "200",
        "/api/*",
        "{host}",
        "{$PORT}",
        "{$HOST:localhost}",
        "header",
        "-Server",
        "@matcher",
        "*.example.com",
        "import",
        "'single'",
    ]
)
_QUOTED = st.sampled_from(['"a b"', '"{ x }"', '"# not comment"', "`raw {x}`", '"\\"esc"'])
_GAP = st.sampled_from([" ", "  ", "\t", " \t "])
_LINE_END = st.sampled_from(["\n", "\n\n", "\n\n\n", " \n", "\r\n", "\t\n"])
_INDENT = st.sampled_from(["", " ", "    ", "\t", "\t\t"])
_COMMENT = st.sampled_from(["# comment", "#x {", "# a  b  }"])


@st.composite
def _line(draw: st.DrawFn) -> str:
    parts = [draw(_WORDS)]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(draw(_GAP))
        parts.append(draw(st.one_of(_WORDS, _QUOTED)))
    if draw(st.booleans()) and draw(st.booleans()):
        parts.append(draw(_GAP) + draw(_COMMENT))
    return draw(_INDENT) + "".join(parts)


@st.composite
def _heredoc(draw: st.DrawFn) -> str:
    marker = draw(st.sampled_from(["EOF", "HTML", "end-1"]))
    body = draw(st.lists(st.sampled_from(["  <p>{x}</p>", "", "\t# not a comment", "}"])))
    body_text = "".join(line + "\n" for line in body)
    return f"respond <<{marker}\n{body_text}{draw(_INDENT)}{marker} 200"


def _block(depth: int) -> st.SearchStrategy[str]:
    @st.composite
    def build(draw: st.DrawFn) -> str:
        head = draw(_line())
        brace = draw(st.sampled_from(["{", " {", "   {", "\n{"]))
        items: list[str] = []
        for _ in range(draw(st.integers(0, 4))):
            choice = draw(st.integers(0, 5 if depth > 0 else 4))
            if choice == 5:
                items.append(draw(_block(depth - 1)))
            elif choice == 4:
                items.append(draw(_INDENT) + draw(_heredoc()))
            elif choice == 3:
                items.append(draw(_INDENT) + draw(_COMMENT))
            else:
                items.append(draw(_line()))
        inner = "".join(item + draw(_LINE_END) for item in items)
        return f"{head}{brace}{draw(_LINE_END)}{inner}{draw(_INDENT)}}}"

    return build()


@st.composite
def _caddyfile(draw: st.DrawFn) -> str:
    out = [draw(st.sampled_from(["", "\n", "  \n"]))]
    for _ in range(draw(st.integers(0, 2))):
        out.append(f"import {draw(_WORDS)}{draw(_LINE_END)}")
    if draw(st.booleans()):
        out.append(draw(_block(1)) + draw(_LINE_END))
    for _ in range(draw(st.integers(0, 3))):
        item = draw(st.one_of(_block(2), _COMMENT, _line()))
        out.append(item + draw(st.sampled_from(["\n", "\n\n", "\n\n\n", " "])))
    return "".join(out)


_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_caddyfile())
def test_format_is_idempotent_on_caddyfile_like_text(text: str) -> None:
    once = format_caddyfile(text)
    assert format_caddyfile(once) == once
    assert once.endswith("\n") and not once.endswith("\n\n\n")


@_SETTINGS
@given(st.text(alphabet=st.sampled_from(list('ab {}#"`\\<$\n\r\t\x1f\u00a0\ufeff')), max_size=80))
def test_format_never_raises_and_ends_with_newline(text: str) -> None:
    out = format_caddyfile(text)
    assert out.endswith("\n")
    assert not is_go_space(out[0]) or out == "\n"


@_SETTINGS
@given(st.text(max_size=200))
def test_format_never_raises_on_arbitrary_text(text: str) -> None:
    assert format_caddyfile(text).endswith("\n")


# -- `pyproxy fmt` ------------------------------------------------------------------------------


def test_line_diff_order_matches_caddy() -> None:
    old = ["Beethoven", "Bach", "Mozart", "Chopin", ""]
    new = ["Beethoven", "Bach", "Brahms", "Chopin", "Liszt", "Wagner", ""]
    got = [f"{p}{line}" for p, line in _fmt_line_diff(old, new)]
    assert got == [
        "  Beethoven",
        "  Bach",
        "- Mozart",
        "+ Brahms",
        "  Chopin",
        "+ Liszt",
        "+ Wagner",
        "  ",
    ]
    # Of several equal blank lines, Caddy's diff keeps the last one.
    got = [f"{p}{line}" for p, line in _fmt_line_diff(["x", "", "", "", "f"], ["y", "", "f"])]
    assert got == ["- x", "- ", "- ", "+ y", "  ", "  f"]


def test_decode_replaces_each_bad_byte_like_go() -> None:
    assert _fmt_decode(b"a\xe2\x82b\xff") == "a\ufffd\ufffdb\ufffd"
    assert _fmt_decode("é\r\n".encode()) == "é\r\n"


def _pyproxy() -> list[str]:
    script = Path(sys.executable).parent / "pyproxy"
    if script.is_file():
        return [str(script)]
    found = shutil.which("pyproxy")
    return [found] if found else [sys.executable, "-m", "proxy.cli"]


def _run(
    *args: str, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*_pyproxy(), "fmt", *args], input=stdin, capture_output=True, cwd=cwd, env=env, timeout=60
    )


UNFORMATTED = b"example.com{\n  respond   hi\n}\n"
FORMATTED = b"example.com {\n\trespond hi\n}\n"


def test_cli_unformatted_file_prints_result_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_bytes(UNFORMATTED)
    proc = _run(str(path))
    assert proc.returncode == 1
    assert proc.stdout == FORMATTED
    assert f"{path}:1: Caddyfile input is not formatted".encode() in proc.stderr
    assert path.read_bytes() == UNFORMATTED


def test_cli_formatted_file_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_bytes(FORMATTED)
    proc = _run(str(path))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, FORMATTED, b"")


def test_cli_reports_first_differing_line(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_bytes(b"a {\n\tb\n\tc    d\n}\n")
    proc = _run(str(path))
    assert proc.returncode == 1
    assert f"{path}:3: Caddyfile input".encode() in proc.stderr


def test_cli_crlf_only_difference_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_bytes(FORMATTED.replace(b"\n", b"\r\n"))
    proc = _run(str(path))
    assert (proc.returncode, proc.stdout) == (0, FORMATTED)


def test_cli_default_file_is_caddyfile_in_cwd(tmp_path: Path) -> None:
    (tmp_path / "Caddyfile").write_bytes(FORMATTED)
    proc = _run(cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, FORMATTED)


def test_cli_config_flag(tmp_path: Path) -> None:
    path = tmp_path / "site.caddy"
    path.write_bytes(UNFORMATTED)
    proc = _run("--config", str(path))
    assert (proc.returncode, proc.stdout) == (1, FORMATTED)
    both = _run("--config", str(path), str(path))
    assert both.returncode == 1
    assert b"does not support multiple files" in both.stderr


def test_cli_overwrite_writes_file(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_bytes(UNFORMATTED)
    proc = _run("--overwrite", str(path))
    assert (proc.returncode, proc.stdout) == (0, b"")
    assert path.read_bytes() == FORMATTED
    again = _run("-w", str(path))
    assert again.returncode == 0 and path.read_bytes() == FORMATTED


def test_cli_diff_prints_caddy_style_diff(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_bytes(UNFORMATTED)
    proc = _run("--diff", str(path))
    assert proc.returncode == 1
    assert proc.stdout.decode().splitlines() == [
        "- example.com{",
        "-   respond   hi",
        "+ example.com {",
        "+ \trespond hi",
        "  }",
        "  ",
    ]


def test_cli_stdin_is_a_filter(tmp_path: Path) -> None:
    proc = _run("-", stdin=UNFORMATTED)
    # Like Caddy: reading stdin prints the result and never fails the formatting check.
    assert (proc.returncode, proc.stdout) == (0, FORMATTED)
    overwrite = _run("--overwrite", "-", stdin=UNFORMATTED)
    assert (overwrite.returncode, overwrite.stdout) == (0, FORMATTED)


def test_cli_missing_file(tmp_path: Path) -> None:
    proc = _run(str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert b"reading input file" in proc.stderr
