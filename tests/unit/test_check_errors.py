"""`pyproxy check` reports the error of every site block, not only the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.adapt import caddyfile_errors
from proxy.cli import main

THREE_BAD_SITES = """{
	http_port 8080
}

a.example.com {
	reverse_proxy www:99999
}

b.example.com {
	frobnicate
}

c.example.com {
	respond ok
}

d.example.com {
	encode bogus
}
"""


def test_every_site_block_error_in_file_order() -> None:
    errors = caddyfile_errors(THREE_BAD_SITES, "Caddyfile")
    assert [e.line for e in errors] == [6, 10, 18]
    assert "99999" in str(errors[0])
    assert "unrecognized directive: frobnicate" in str(errors[1])
    assert "bogus" in str(errors[2])


def test_valid_file_has_no_errors() -> None:
    assert caddyfile_errors("a.example.com {\n\trespond ok\n}\n", "Caddyfile") == []


def test_parse_error_stops_there() -> None:
    errors = caddyfile_errors('a.example.com {\n\trespond "ok\n', "Caddyfile")
    assert len(errors) == 1


def test_check_command_prints_each_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(THREE_BAD_SITES)
    assert main(["check", str(path)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 3
    assert f"{path}:10" in lines[1]
