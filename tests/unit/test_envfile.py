"""--envfile parsing (config.envfile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.envfile import parse_envfile
from config.errors import ConfigError


def test_comments_export_and_quotes(tmp_path: Path) -> None:
    f = tmp_path / "vars.env"
    f.write_text("# c\n\nexport A=\"x y\"\nB='1'\nC = plain\nD=\n")
    assert parse_envfile(str(f)) == {"A": "x y", "B": "1", "C": "plain", "D": ""}


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "vars.env"
    f.write_text("A=1\nnot a pair\n")
    with pytest.raises(ConfigError) as info:
        parse_envfile(str(f))
    assert info.value.line == 2
    assert str(info.value) == f"{f}:2: expected KEY=VALUE"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_envfile(str(tmp_path / "absent.env"))
    assert info.value.file == str(tmp_path / "absent.env")
