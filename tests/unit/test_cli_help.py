"""`pyproxy help`, `help <verb>`, `--version` and the unknown-verb message, next to Caddy's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import CADDY, REPO, run_pyproxy

from proxy import cli

needs_caddy = pytest.mark.skipif(CADDY is None, reason="needs /usr/bin/caddy")


def _pyproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return run_pyproxy(*args)


def test_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["help"]) == 0
    out = capsys.readouterr().out
    for verb in ("adapt", "validate", "fmt", "reload", "stop", "run", "version", "help"):
        assert f"    {verb} " in out


@pytest.mark.parametrize("verb", sorted(cli.VERB_HELP))
def test_help_verb_has_what_example_and_exit_codes(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["help", verb]) == 0
    out = capsys.readouterr().out
    what, example, _ = cli.VERB_HELP[verb]
    assert what.splitlines()[0] in out
    assert f"example:\n  {example}" in out
    assert "exit codes:" in out or "Exit codes" in out


def test_version_flag_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"pyproxy v{__version__} ")


def test_unknown_verb_message_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frm"]) == 1
    err = capsys.readouterr().err
    assert err == (
        'Error: unknown command "frm" for "pyproxy"\n\nDid you mean this?\n\tfmt\n\n'
        "Run 'pyproxy --help' for usage.\n"
    )


def test_help_unknown_verb_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["help", "nosuchverb"]) == 1
    assert 'unknown command "nosuchverb"' in capsys.readouterr().err


@needs_caddy
@pytest.mark.parametrize("verb", ["foo", "frm", "relaod", "xyzzy"])
def test_unknown_verb_same_as_caddy(verb: str) -> None:
    assert CADDY is not None
    caddy = subprocess.run([CADDY, verb], capture_output=True, text=True, timeout=30, check=False)
    ours = _pyproxy(verb)
    assert ours.returncode == caddy.returncode == 1
    expected = caddy.stderr.replace('"caddy"', '"pyproxy"').replace("'caddy ", "'pyproxy ")
    # Caddy only suggests verbs it has; compare the shape line by line where both suggest.
    assert ours.stderr.splitlines()[0] == expected.splitlines()[0]
    assert ours.stderr.splitlines()[-1] == expected.splitlines()[-1]
    assert ("Did you mean this?" in ours.stderr) == ("Did you mean this?" in caddy.stderr)


@needs_caddy
@pytest.mark.parametrize("verb", ["reload", "adapt", "fmt", "validate", "stop", "run"])
def test_help_verb_exit_code_same_as_caddy(verb: str) -> None:
    assert CADDY is not None
    caddy = subprocess.run(
        [CADDY, "help", verb], capture_output=True, text=True, timeout=30, check=False
    )
    ours = _pyproxy("help", verb)
    assert ours.returncode == caddy.returncode == 0
    assert f"pyproxy {verb}" in ours.stdout


def test_missing_brace_names_file_line_without_a_list(tmp_path: Path) -> None:
    config = tmp_path / "Caddyfile"
    config.write_text("example.com {\n\trespond hi\n")
    result = _pyproxy("adapt", "--config", str(config))
    assert result.returncode == 1
    assert f"at {config}:2" in result.stderr
    assert "import chain" not in result.stderr and "['" not in result.stderr


@pytest.mark.parametrize("verb", ["adapt", "validate"])
def test_no_caddyfile_in_cwd_gives_caddys_hint(tmp_path: Path, verb: str) -> None:
    env = {**os.environ, "PYPROXY_NATIVE": "0", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", verb],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "Error: input file required when there is no Caddyfile in current directory "
        "(use --config flag)\n"
    )


@needs_caddy
def test_no_caddyfile_adapt_same_as_caddy(tmp_path: Path) -> None:
    assert CADDY is not None
    caddy = subprocess.run(
        [CADDY, "adapt"], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )
    env = {**os.environ, "PYPROXY_NATIVE": "0", "PYTHONPATH": str(REPO)}
    ours = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "adapt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ours.returncode == caddy.returncode == 1
    assert ours.stderr.strip() == caddy.stderr.strip()


@pytest.mark.parametrize(("prog", "hint"), [(None, "'pyproxy fmt "), ("caddy", "'caddy fmt ")])
def test_fmt_hint_names_the_invoked_command(tmp_path: Path, prog: str | None, hint: str) -> None:
    config = tmp_path / "Caddyfile"
    config.write_text("example.com {\nrespond hi\n}\n")
    env = {**os.environ, "PYPROXY_NATIVE": "0"}
    env.pop("PYPROXY_PROG", None)
    if prog:
        env["PYPROXY_PROG"] = prog
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "adapt", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert f"{hint}--overwrite'" in result.stderr
