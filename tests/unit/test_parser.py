"""Tests for the Caddyfile parser: blocks, addresses, snippets, imports, env vars, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.caddyfile.envvars import replace_env_vars
from config.caddyfile.imports import ImportCycleError, ImportGraph, parse_variadic, replace_args
from config.caddyfile.parser import ServerBlock, parse
from config.caddyfile.token import Token
from config.errors import ConfigError

TESTDATA = Path(__file__).resolve().parent / "caddyfile_testdata"


def shape(blocks: list[ServerBlock]) -> list[tuple[list[str], list[list[str]]]]:
    """Keys and segment texts of each block: easy to compare."""
    return [(b.key_texts(), [[t.text for t in seg] for seg in b.segments]) for b in blocks]


def parse_error(text: str, filename: str = "Caddyfile") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(filename, text)
    return info.value


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- server blocks and addresses -------------------------------------------------------------


def test_single_site_with_braces() -> None:
    blocks = parse("Caddyfile", "example.com {\n\trespond hi\n\tfile_server\n}\n")
    assert shape(blocks) == [(["example.com"], [["respond", "hi"], ["file_server"]])]
    assert blocks[0].has_braces
    assert blocks[0].directive_names() == ["respond", "file_server"]


def test_single_site_without_braces() -> None:
    blocks = parse("Caddyfile", "localhost:8080\nrespond hi\nlog\n")
    assert shape(blocks) == [(["localhost:8080"], [["respond", "hi"], ["log"]])]
    assert not blocks[0].has_braces


def test_addresses_only() -> None:
    assert shape(parse("Caddyfile", "a.com b.com")) == [(["a.com", "b.com"], [])]


def test_address_lists_with_commas_and_spaces() -> None:
    text = "http://a.com,\n  https://b.com , c.com d.com {\n}\n"
    assert parse("Caddyfile", text)[0].key_texts() == [
        "http://a.com",
        "https://b.com",
        "c.com",
        "d.com",
    ]


def test_key_tokens_keep_position() -> None:
    key = parse("Site", "\n\nexample.com, other.com {\n}\n")[0].keys[0]
    assert (key.file, key.line, key.text) == ("Site", 3, "example.com")


def test_several_blocks_in_order() -> None:
    text = "a.com {\n\tone\n}\nb.com {\n\ttwo x\n}\n"
    assert shape(parse("Caddyfile", text)) == [
        (["a.com"], [["one"]]),
        (["b.com"], [["two", "x"]]),
    ]


def test_nested_blocks_form_one_segment() -> None:
    text = "a.com {\n\thandle /x {\n\t\troute {\n\t\t\trespond 1\n\t\t}\n\t}\n\tlog\n}\n"
    assert shape(parse("Caddyfile", text))[0][1] == [
        ["handle", "/x", "{", "route", "{", "respond", "1", "}", "}"],
        ["log"],
    ]


def test_global_options_block_has_no_keys() -> None:
    blocks = parse("Caddyfile", "{\n\tdebug\n\tadmin off\n}\n\nexample.com {\n}\n")
    assert shape(blocks) == [([], [["debug"], ["admin", "off"]]), (["example.com"], [])]
    assert blocks[0].has_braces


def test_quoted_braces_are_arguments() -> None:
    text = 'localhost {\n dir1 "{" `}`\n dir2 "}"\n dir3 "{}"\n}'
    assert shape(parse("Caddyfile", text))[0][1] == [
        ["dir1", "{", "}"],
        ["dir2", "}"],
        ["dir3", "{}"],
    ]


def test_brace_on_next_line_for_site_is_accepted() -> None:
    # Caddy only rejects this for directive blocks; a site block may open on the next line.
    blocks = parse("Caddyfile", "example.com\n{\n\trespond hi\n}\n")
    assert shape(blocks) == [(["example.com"], [["respond", "hi"]])]


def test_empty_quoted_key_ignored() -> None:
    assert parse("Caddyfile", '""') == []


def test_empty_input_is_caddys_eof_error() -> None:
    assert str(parse_error("")) == "EOF"


def test_whitespace_only_input_has_no_blocks() -> None:
    assert parse("Caddyfile", "\n  # nothing\n") == []


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        (
            "a.com,b.com {\n}\n",
            "Site addresses cannot contain a comma ',': 'a.com,b.com' - put a space after "
            "the comma to separate site addresses, at Caddyfile:1",
            1,
        ),
        (
            "\nlocalhost{\n\tdir1\n}",
            "Site addresses cannot end with a curly brace: 'localhost{' - put a space "
            "between the token and the brace, at Caddyfile:2",
            2,
        ),
        (
            "http://localhost, {\n}",
            "Expected another address but had '{' - check for extra comma, at Caddyfile:1",
            1,
        ),
        ("a.com, b.com,", "unexpected EOF, at Caddyfile:1", 1),
        (
            "@m path /x\n",
            "request matchers may not be defined globally, they must be in a site block; "
            "found @m, at Caddyfile:1",
            1,
        ),
        (
            "localhost\ndir1 { a b }",
            "Unexpected next token after '{' on same line, at Caddyfile:2",
            2,
        ),
        (
            "localhost\ndir1\n{\n\ta b\n}",
            "Unexpected '{' on a new line; did you mean to place the '{' on the previous "
            "line?, at Caddyfile:3",
            3,
        ),
        ("localhost\ndir1 {}", "Unexpected '{}' at end of line, at Caddyfile:2", 2),
        ("localhost\ndir1 {\n\tfoo", "unexpected EOF, at Caddyfile:3", 3),
        (
            "localhost {\n\tdir1 }\n}",
            "Unexpected '}' because no matching opening brace, at Caddyfile:2",
            2,
        ),
        (
            "a.com {\n\tdir1\n",
            "syntax error: unexpected token 'dir1', expecting '}', at Caddyfile:2",
            2,
        ),
        (
            "(snip) {\n\tfoo\n}\n(snip) {\n\tbar\n}\n",
            "redeclaration of previously declared snippet snip, at Caddyfile:4",
            4,
        ),
        (
            "(snip) {\n\tfoo\n",
            "syntax error: unexpected token 'foo', expecting '}', at Caddyfile:2",
            2,
        ),
    ],
)
def test_structure_errors(text: str, message: str, line: int) -> None:
    error = parse_error(text)
    assert str(error) == message
    assert (error.file, error.line) == ("Caddyfile", line)


def test_lexer_error_propagates_with_location() -> None:
    error = parse_error("a.com {\n\trespond <<<END\n\tx\n\tEND\n}\n")
    assert str(error) == "too many '<' for heredoc on line #2; only use two, for example <<END"
    assert (error.file, error.line) == ("Caddyfile", 2)


# -- environment variables -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("plain", "plain"),
        ("{$PP_SET}", "value"),
        ("a{$PP_SET}b", "avalueb"),
        ("{$PP_UNSET}", ""),
        ("x{$PP_UNSET}y", "xy"),
        ("{$PP_UNSET:fallback}", "fallback"),
        ("{$PP_UNSET:a:b}", "a:b"),
        ("{$PP_SET:fallback}", "value"),
        ("{$PP_EMPTY:fallback}", ""),
        ("{$PP_CHAINED}", "{$PP_SET}"),
        ("{$PP_UNSET:{$PP_SET}", "{$PP_SET"),
        ("{$}", "{$}"),
        ("{$$}", ""),
        ("{$PP_SET", "{$PP_SET"),
        ("}{$", "}{$"),
        ("{env.PP_SET}", "{env.PP_SET}"),
        ("{$PP_SET} {$PP_SET}", "value value"),
    ],
)
def test_env_var_replacement(text: str, expected: str) -> None:
    environ = {"PP_SET": "value", "PP_EMPTY": "", "PP_CHAINED": "{$PP_SET}"}
    assert replace_env_vars(text, environ) == expected


def test_env_vars_replaced_before_lexing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_SITE", "a.com b.com")
    monkeypatch.setenv("PP_BODY", '"hello world"')
    monkeypatch.delenv("PP_MISSING", raising=False)
    text = "{$PP_SITE} {\n\trespond {$PP_BODY} {$PP_MISSING:200}\n\theader X {env.PP_SITE}\n}\n"
    assert shape(parse("Caddyfile", text)) == [
        (
            ["a.com", "b.com"],
            [["respond", "hello world", "200"], ["header", "X", "{env.PP_SITE}"]],
        )
    ]


def test_env_var_to_empty_input_is_eof(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PP_MISSING", raising=False)
    assert str(parse_error("{$PP_MISSING}")) == "EOF"


# -- snippets --------------------------------------------------------------------------------


def test_snippet_is_not_a_block_and_is_imported() -> None:
    text = "(common) {\n\tencode gzip\n\tlog\n}\nexample.com {\n\timport common\n\trespond ok\n}\n"
    blocks = parse("Caddyfile", text)
    assert shape(blocks) == [(["example.com"], [["encode", "gzip"], ["log"], ["respond", "ok"]])]
    encode = blocks[0].segments[0][0]
    assert encode.imports == ("Caddyfile:6 (import common)",)
    assert encode.snippet_name == "common"
    assert encode.line == 2


def test_snippet_args_single_and_variadic() -> None:
    text = (
        "(s) {\n"
        "\trespond {args[0]} {args[1]}\n"
        "\tall {args[:]}\n"
        "\ttail {args[1:]}\n"
        "\thead {args[:1]}\n"
        "\tjoined x-{args[0]}-{args[2]}\n"
        "\tmissing {args[7]} {args.1}\n"
        "\tother {host} \\{args[0]\\}\n"
        "}\n"
        'a.com {\n\timport s one "two words" three\n}\n'
    )
    assert shape(parse("Caddyfile", text))[0][1] == [
        ["respond", "one", "two words"],
        ["all", "one", "two words", "three"],
        ["tail", "two words", "three"],
        ["head", "one"],
        ["joined", "x-one-three"],
        ["missing", "{args[7]}", "two words"],
        ["other", "{host}", "{args[0]}"],
    ]


def test_snippet_with_block_and_blocks_keys() -> None:
    text = (
        "(s) {\n"
        "\treverse_proxy {args[0]} {\n"
        "\t\t{block}\n"
        "\t}\n"
        "\theader {\n"
        "\t\t{blocks.headers}\n"
        "\t}\n"
        "\tlog {blocks.missing}\n"
        "}\n"
        "a.com {\n"
        "\timport s app:80 {\n"
        "\t\tlb_policy first\n"
        "\t\theaders {\n"
        "\t\t\tX-A 1\n"
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )
    segments = shape(parse("Caddyfile", text))[0][1]
    assert segments == [
        [
            "reverse_proxy",
            "app:80",
            "{",
            "lb_policy",
            "first",
            "headers",
            "{",
            "X-A",
            "1",
            "}",
            "}",
        ],
        ["header", "{", "X-A", "1", "}"],
        ["log"],
    ]


def test_import_block_with_whole_site_snippet() -> None:
    text = (
        "(site) {\n\thttps://{args[0]} {\n\t\t{block}\n\t}\n}\n\n"
        "import site test.domain {\n"
        "\treverse_proxy http://192.168.1.1:8080 {\n\t\theader_up Host {host}\n\t}\n}\n"
    )
    assert shape(parse("Caddyfile", text)) == [
        (
            ["https://test.domain"],
            [["reverse_proxy", "http://192.168.1.1:8080", "{", "header_up", "Host", "{host}", "}"]],
        )
    ]


def test_anonymous_import_block_rejected() -> None:
    text = "(s) {\n\t{block}\n}\na.com {\n\timport s {\n\t\t{\n\t\t\tfoo\n\t\t}\n\t}\n}\n"
    assert str(parse_error(text)).startswith("anonymous blocks are not supported, at Caddyfile:")


def test_snippet_defined_after_use_is_a_file_import() -> None:
    error = parse_error("a.com {\n\timport later\n}\n(later) {\n\tlog\n}\n")
    assert str(error) == "File to import not found: later, at Caddyfile:2"


def test_named_route_block() -> None:
    blocks = parse("Caddyfile", "&(app) {\n\treverse_proxy app:80\n}\na.com {\n}\n")
    assert blocks[0].is_named_route
    assert blocks[0].key_texts() == ["app"]
    assert [t.text for t in blocks[0].segments[0]] == [
        "app",
        "{",
        "reverse_proxy",
        "app:80",
        "}",
    ]
    assert not blocks[1].is_named_route


def test_snippet_cycle() -> None:
    text = (
        "(import1) {\n\timport import2\n}\n\n(import2) {\n\timport import1\n}\n\nimport import1\n"
    )
    assert str(parse_error(text)) == (
        "a cycle of imports exists between Caddyfile:import2 and Caddyfile:import1"
    )


def test_self_importing_snippet_is_a_cycle() -> None:
    error = parse_error("(A) {\n\timport A\n}\n:80\nimport A\n")
    assert "a cycle of imports exists" in str(error)


def test_same_snippet_imported_twice_is_fine() -> None:
    text = "(s) {\n\tlog\n}\na.com {\n\timport s\n\timport s\n}\nb.com {\n\timport s\n}\n"
    assert shape(parse("Caddyfile", text)) == [
        (["a.com"], [["log"], ["log"]]),
        (["b.com"], [["log"]]),
    ]


def test_global_options_after_imported_snippets_hint(tmp_path: Path) -> None:
    one = write(tmp_path, "one.caddy", "(matcher1)")
    two = write(tmp_path, "two.caddy", "(matcher2)")
    error = parse_error(f"import {one}\nimport {two}\n{{\n\tdebug\n}}\n")
    assert str(error).startswith(
        "global options block must appear before import directives; move the global "
        "options block to the top of the Caddyfile"
    )


def test_import_word_as_argument_is_not_an_import() -> None:
    text = "a.com {\n\tbasic_auth / import password\n}\n"
    assert shape(parse("Caddyfile", text))[0][1] == [["basic_auth", "/", "import", "password"]]


def test_import_without_argument() -> None:
    error = parse_error("a.com {\n\timport\n}\n")
    assert (
        str(error)
        == "wrong argument count or unexpected line ending after 'import', at Caddyfile:2"
    )


def test_import_empty_pattern() -> None:
    error = parse_error('a.com {\n\timport ""\n}\n')
    assert str(error) == "Import requires a non-empty filepath, at Caddyfile:2"


# -- file imports ----------------------------------------------------------------------------


def test_import_file_relative_to_importing_file(tmp_path: Path) -> None:
    write(tmp_path, "conf/sites.caddy", "host1 {\n\tdir1\n\timport inner/more.caddy\n}\n")
    write(tmp_path, "conf/inner/more.caddy", "dir2 arg1\n")
    main = write(tmp_path, "Caddyfile", "import conf/sites.caddy\n")
    blocks = parse(str(main), main.read_text())
    assert shape(blocks) == [(["host1"], [["dir1"], ["dir2", "arg1"]])]
    dir2 = blocks[0].segments[1][0]
    assert dir2.file == str(tmp_path / "conf" / "inner" / "more.caddy")
    assert dir2.line == 1
    assert dir2.imports == (f"{tmp_path / 'conf' / 'sites.caddy'}:3 (import)",)
    assert blocks[0].keys[0].imports == (f"{main}:1 (import)",)


def test_import_relative_to_working_directory_for_relative_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "snip.txt", "dir2 a b\ndir3\n")
    monkeypatch.chdir(tmp_path)
    text = "localhost\ndir1 arg1\nimport snip.txt\n"
    assert shape(parse("Caddyfile", text)) == [
        (["localhost"], [["dir1", "arg1"], ["dir2", "a", "b"], ["dir3"]])
    ]


def test_import_file_with_args(tmp_path: Path) -> None:
    write(tmp_path, "respond.txt", "respond \"'I am {args[0]}', hears {args[1]}\"\n")
    main = tmp_path / "Caddyfile"
    text = (
        "example.com\n\nimport respond.txt Groot Rocket\n"
        'import respond.txt you "the confused man"\n'
    )
    assert shape(parse(str(main), text))[0][1] == [
        ["respond", "'I am Groot', hears Rocket"],
        ["respond", "'I am you', hears the confused man"],
    ]


def test_import_args_as_site_keys(tmp_path: Path) -> None:
    write(tmp_path, "args1.txt", "{args[0]} {args[1]}")
    main = tmp_path / "Caddyfile"
    assert shape(parse(str(main), "import args1.txt a b")) == [(["a", "b"], [])]


def test_import_glob_sorted_and_skips_dot_files(tmp_path: Path) -> None:
    write(tmp_path, "sites/b.caddy", "b.com {\n}\n")
    write(tmp_path, "sites/a.caddy", "a.com {\n}\n")
    write(tmp_path, "sites/.hidden", "hidden.com {\n}\n")
    main = tmp_path / "Caddyfile"
    assert [b.key_texts() for b in parse(str(main), "import sites/*")] == [["a.com"], ["b.com"]]
    assert [b.key_texts() for b in parse(str(main), "import sites/.*")] == [["hidden.com"]]
    assert [b.key_texts() for b in parse(str(main), "import sites/?.caddy")] == [
        ["a.com"],
        ["b.com"],
    ]


def test_import_glob_without_matches_is_fine(tmp_path: Path) -> None:
    main = tmp_path / "Caddyfile"
    assert parse(str(main), "a.com {\n\timport nothing/*.caddy\n\tlog\n}\n")[
        0
    ].directive_names() == ["log"]


def test_import_glob_with_two_wildcards_rejected(tmp_path: Path) -> None:
    main = tmp_path / "Caddyfile"
    error = parse_error("import */*.txt", str(main))
    assert str(error) == (
        "Glob pattern may only contain one wildcard (*), but has others: "
        f"{tmp_path}/*/*.txt, at {main}:1"
    )
    assert "may only contain one wildcard" in str(parse_error("import /[a-z]", str(main)))
    assert "may only contain one wildcard" in str(parse_error("import /???/?*?o", str(main)))


def test_import_bad_pattern(tmp_path: Path) -> None:
    main = tmp_path / "Caddyfile"
    error = parse_error("import /tmp/x[", str(main))
    assert (
        str(error) == f"Failed to use import pattern /tmp/x[: syntax error in pattern, at {main}:1"
    )


def test_import_missing_file(tmp_path: Path) -> None:
    main = tmp_path / "Caddyfile"
    error = parse_error("a.com {\n\tlog\n\timport missing.conf\n}\n", str(main))
    assert str(error) == f"File to import not found: missing.conf, at {main}:3"
    assert (error.file, error.line) == (str(main), 3)


def test_import_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    main = tmp_path / "Caddyfile"
    error = parse_error("import dir", str(main))
    assert str(error) == f"Could not import {tmp_path}/dir: is a directory, at {main}:1"


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_import_empty_file_is_fine(tmp_path: Path, content: str) -> None:
    write(tmp_path, "empty.txt", content)
    main = tmp_path / "Caddyfile"
    assert parse(str(main), "import empty.txt") == []
    assert shape(parse(str(main), "a.com {\n\timport empty.txt\n\tlog\n}\n")) == [
        (["a.com"], [["log"]])
    ]


def test_import_file_that_expands_to_nothing_is_eof(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PP_MISSING", raising=False)
    path = write(tmp_path, "env.txt", "{$PP_MISSING}")
    main = tmp_path / "Caddyfile"
    error = parse_error("import env.txt", str(main))
    assert str(error) == f"Could not read tokens while importing {path}: EOF, at {main}:1"


def test_import_nested_in_directive_block(tmp_path: Path) -> None:
    write(tmp_path, "props", "prop1 1\nprop2 2")
    main = tmp_path / "Caddyfile"
    text = "localhost\ndir1\nproxy {\n\timport props\n\ttransparent\n}"
    assert shape(parse(str(main), text))[0][1] == [
        ["dir1"],
        ["proxy", "{", "prop1", "1", "prop2", "2", "transparent", "}"],
    ]


def test_import_file_env_vars_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_UPSTREAM", "app:9000")
    write(tmp_path, "proxy.caddy", "reverse_proxy {$PP_UPSTREAM}\n")
    main = tmp_path / "Caddyfile"
    assert shape(parse(str(main), "a.com {\n\timport proxy.caddy\n}\n"))[0][1] == [
        ["reverse_proxy", "app:9000"]
    ]


def test_import_lexer_error_names_import_site(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.caddy", "respond <<\nx\n")
    main = tmp_path / "Caddyfile"
    error = parse_error("a.com {\n\timport bad.caddy\n}\n", str(main))
    assert str(error) == (
        f"Could not read tokens while importing {bad}: missing opening heredoc marker on "
        "line #1; must contain only alphanumeric characters, dashes and underscores; got "
        f"empty string, at {main}:2"
    )


def test_import_snippets_across_files(tmp_path: Path) -> None:
    site = write(tmp_path, "site.caddy", "http://example.com {\n\timport common\n}\n")
    main = tmp_path / "Caddyfile"
    text = f"(common) {{\n\tencode gzip\n}}\nimport {site}\n"
    assert shape(parse(str(main), text)) == [(["http://example.com"], [["encode", "gzip"]])]


def test_snippet_defined_in_imported_file_keeps_its_placeholders(tmp_path: Path) -> None:
    snippets = write(
        tmp_path,
        "snippets.caddy",
        '(site) {\n\thttp://{args[0]} {\n\t\trespond "before"\n\t\t{block}\n'
        '\t\trespond "after"\n\t}\n}\n',
    )
    main = tmp_path / "Caddyfile"
    with_block = f"import {snippets}\n\nimport site example.com {{\n\tredir https://x.net\n}}\n"
    blocks = parse(str(main), with_block)
    assert shape(blocks) == [
        (
            ["http://example.com"],
            [["respond", "before"], ["redir", "https://x.net"], ["respond", "after"]],
        )
    ]
    without_block = f"import {snippets}\n\nimport site example.com\n"
    assert parse(str(main), without_block)[0].directive_names() == ["respond", "respond"]


def test_file_import_cycle(tmp_path: Path) -> None:
    write(tmp_path, "one.txt", "import two.txt")
    write(tmp_path, "two.txt", "import three.txt")
    write(tmp_path, "three.txt", "import one.txt")
    main = tmp_path / "Caddyfile"
    error = parse_error("import one.txt", str(main))
    assert str(error).startswith("a cycle of imports exists between ")
    assert "one.txt" in str(error)


def test_file_self_import_cycle(tmp_path: Path) -> None:
    write(tmp_path, "self.txt", "import self.txt")
    main = tmp_path / "Caddyfile"
    assert str(parse_error("import self.txt", str(main))) == (
        f"a cycle of imports exists between {tmp_path}/self.txt and {tmp_path}/self.txt"
    )


def test_unclosed_site_after_closed_directive_block_is_accepted() -> None:
    # Caddy's quirk: the directive's own `}` satisfies the check for the site's `}`.
    assert shape(parse("Caddyfile", "a.com {\n\tdir {\n\t}\n")) == [
        (["a.com"], [["dir", "{", "}"]])
    ]


def test_import_from_fixture_directory() -> None:
    main = TESTDATA / "Caddyfile"
    blocks = parse(str(main), main.read_text(encoding="utf-8"))
    assert shape(blocks) == [
        (["glob.one"], [["respond", "one"]]),
        (["glob.two"], [["respond", "two", "extra"]]),
    ]


def test_errors_inside_imported_file_carry_chain(tmp_path: Path) -> None:
    write(tmp_path, "site.caddy", "a.com {\n\tdir {\n\t\tx\n")
    main = tmp_path / "Caddyfile"
    error = parse_error("import site.caddy\n", str(main))
    assert str(error) == (
        f"unexpected EOF, at {tmp_path}/site.caddy:3 import chain ['{main}:1 (import)']"
    )


# -- helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", False),
        ("{args[1", False),
        ("1]}", False),
        ("{args[:]}aaaaa", False),
        ("aaaaa{args[:]}", False),
        ("{args.}", False),
        ("{args.1}", False),
        ("{args[]}", False),
        ("{args[:]}", True),
        ("{args[0:]}", True),
        ("{args[:0]}", True),
        ("{args[-1:]}", False),
        ("{args[:11]}", False),
        ("{args[10:0]}", False),
        ("{args[0:10]}", True),
        ("{args[0]}:{args[1]}:{args[2]}", False),
        ("{args[ 1:]}", False),
    ],
)
def test_parse_variadic(text: str, expected: bool) -> None:
    assert parse_variadic(Token(file="f", line=1, text=text), 10)[0] is expected


@pytest.mark.parametrize(
    ("args", "text", "expected"),
    [
        (["123"], "{args[0]}", "123"),
        (["123"], '{"key":"{args[0]}"}', '{"key":"123"}'),
        (["1", "2"], '{"key":[{args[0]},{args[1]}]}', '{"key":[1,2]}'),
        (["a"], "{args[1]}", "{args[1]}"),
        (["a"], "{{args[0]}}", "{a}"),
        (["a"], "pre\\{args[0]\\}", "pre{args[0]}"),
        (["a"], "{args[0]", "{args[0]"),
        (["a"], "{args[+0]}", "a"),
        ([], "{x}", "{x}"),
    ],
)
def test_replace_args(args: list[str], text: str, expected: str) -> None:
    assert replace_args(text, args) == expected


def test_import_graph() -> None:
    graph = ImportGraph()
    graph.add_nodes(["a", "b", "c"])
    graph.add_edges("a", ["b", "c"])
    graph.add_edge("b", "c")
    graph.add_edge("a", "b")  # already there: fine
    with pytest.raises(ImportCycleError, match="a cycle of imports exists between c and a"):
        graph.add_edge("c", "a")
    with pytest.raises(ImportCycleError, match="does not exist"):
        graph.add_edge("a", "zzz")


def test_parse_does_not_change_environment() -> None:
    before = dict(os.environ)
    parse("Caddyfile", "{$PP_UNSET_X:1} {\n}\n")
    assert dict(os.environ) == before
