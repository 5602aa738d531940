"""`pyproxy fmt`'s flag combinations against current Caddy's cmdFmt (cmd/commandfuncs.go): "-"
is a pure filter (no --overwrite, --diff or check); --overwrite wins over --diff and exits 0;
otherwise the preview (--diff or the result) is printed and unformatted input exits 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main

UNFORMATTED = "a{\n  b\n}\n"
FORMATTED = "a {\n\tb\n}\n"


def test_diff_of_formatted_input_is_all_context_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(FORMATTED)
    assert main(["fmt", "--diff", str(path)]) == 0
    captured = capsys.readouterr()
    # Caddy splits both texts on "\n": the final empty line is context too.
    assert (captured.out, captured.err) == ("  a {\n  \tb\n  }\n  \n", "")


def test_overwrite_wins_over_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(UNFORMATTED)
    assert main(["fmt", "--overwrite", "--diff", str(path)]) == 0
    assert capsys.readouterr().out == ""
    assert path.read_text() == FORMATTED


def test_unformatted_diff_names_the_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(UNFORMATTED)
    assert main(["fmt", "-d", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"Error: {path}:1: Caddyfile input is not formatted; Tip: use '--overwrite' to update"
        " your Caddyfile in-place instead of previewing it. Consult '--help' for more options\n"
    )
    assert path.read_text() == UNFORMATTED


def test_two_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fmt", "x", "y"]) == 1
    # Caddy's "%s %s" with an empty --config: two spaces.
    assert capsys.readouterr().err == "Error: fmt does not support multiple files  x y\n"
    assert main(["fmt", "--config", "c", "x"]) == 1
    assert capsys.readouterr().err == "Error: fmt does not support multiple files c x\n"
