"""`pyproxy hash-password`, checked against Caddy's own hashes where Caddy is installed."""

from __future__ import annotations

import subprocess

import bcrypt
import pytest
from clikit import CADDY, run_pyproxy


def _hash(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_pyproxy("hash-password", *args, stdin=stdin)


def test_plaintext_gives_a_go_style_bcrypt_hash() -> None:
    result = _hash("--plaintext", "hiccup", "--algorithm", "bcrypt")
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert hashed.startswith("$2a$14$")
    assert bcrypt.checkpw(b"hiccup", hashed.encode())


def test_password_from_stdin() -> None:
    result = _hash(stdin="from-stdin\n")
    assert result.returncode == 0, result.stderr
    assert bcrypt.checkpw(b"from-stdin", result.stdout.strip().encode())


def test_unknown_algorithm_like_caddy() -> None:
    result = _hash("--plaintext", "x", "--algorithm", "foo")
    assert result.returncode == 1
    assert result.stderr == "Error: unrecognized hash algorithm: foo\n"


@pytest.mark.skipif(CADDY is None, reason="needs /usr/bin/caddy")
def test_caddys_hash_verifies_and_errors_match() -> None:
    assert CADDY is not None
    caddy = subprocess.run(
        [CADDY, "hash-password", "--plaintext", "hiccup"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert caddy.returncode == 0
    # Same format: Caddy's hash verifies with the library pyproxy uses, and vice versa.
    assert bcrypt.checkpw(b"hiccup", caddy.stdout.strip().encode())
    assert caddy.stdout.strip()[:7] == _hash("--plaintext", "hiccup").stdout.strip()[:7]
    bad = subprocess.run(
        [CADDY, "hash-password", "--plaintext", "x", "--algorithm", "foo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == _hash("--plaintext", "x", "--algorithm", "foo").returncode == 1
    assert bad.stderr.strip().endswith("Error: unrecognized hash algorithm: foo")
