"""HTTP-01 tokens in storage (certmagic's distributed solver layout) and `answer_http01`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acme_client.http01 import (
    Http01Challenge,
    answer_http01,
    is_http01_path,
    publish_http01,
    remove_http01,
)
from acme_client.storage import FileStorage

ISSUER = "acme-v02.api.letsencrypt.org-directory"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
PATH = "/.well-known/acme-challenge/" + TOKEN


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path)


def publish(storage: FileStorage, domain: str = "example.com", issuer: str = ISSUER) -> None:
    publish_http01(
        storage,
        issuer,
        Http01Challenge(domain=domain, token=TOKEN, key_authorization=KEYAUTH, url="https://ca/c"),
    )


def test_published_under_certmagic_key_with_acmez_shape(storage: FileStorage) -> None:
    publish(storage)
    path = storage.root / "acme" / ISSUER / "challenge_tokens" / "example.com.json"
    doc = json.loads(path.read_bytes())
    assert doc == {
        "type": "http-01",
        "url": "https://ca/c",
        "status": "pending",
        "token": TOKEN,
        "keyAuthorization": KEYAUTH,
        "identifier": {"type": "dns", "value": "example.com"},
    }


def test_answer_matches_token_and_host(storage: FileStorage) -> None:
    publish(storage)
    assert answer_http01(storage, "example.com", PATH) == KEYAUTH.encode()
    # Host is case-insensitive; a trailing dot is the same name.
    assert answer_http01(storage, "EXAMPLE.com.", PATH) == KEYAUTH.encode()


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("other.example.com", PATH),  # not this host's challenge
        ("example.com", "/.well-known/acme-challenge/wrongtoken"),
        ("example.com", "/.well-known/acme-challenge/"),
        ("example.com", "/.well-known/acme-challenge/" + TOKEN + "/x"),
        ("example.com", "/" + TOKEN),
        ("", PATH),
    ],
)
def test_no_answer_for_other_requests(storage: FileStorage, host: str, path: str) -> None:
    publish(storage)
    assert answer_http01(storage, host, path) is None


def test_answer_written_by_caddy(storage: FileStorage) -> None:
    # A document as certmagic's distributedSolver marshals acmez's acme.Challenge.
    doc = {
        "type": "http-01",
        "url": "https://acme-v02.api.letsencrypt.org/acme/chall/1/2/x",
        "status": "pending",
        "token": TOKEN,
        "keyAuthorization": KEYAUTH,
        "identifier": {"type": "dns", "value": "www.example.org"},
    }
    storage.store(f"acme/{ISSUER}/challenge_tokens/www.example.org.json", json.dumps(doc).encode())
    assert answer_http01(storage, "www.example.org", PATH) == KEYAUTH.encode()


def test_any_issuer_directory_is_searched(storage: FileStorage) -> None:
    publish(storage, issuer="127.0.0.1-14000-dir")
    assert answer_http01(storage, "example.com", PATH) == KEYAUTH.encode()
    assert answer_http01(storage, "example.com", PATH, issuer_keys=[ISSUER]) is None


def test_removed_token_is_not_answered(storage: FileStorage) -> None:
    publish(storage)
    remove_http01(storage, ISSUER, "example.com")
    assert answer_http01(storage, "example.com", PATH) is None
    remove_http01(storage, ISSUER, "example.com")  # missing is fine


def test_empty_or_corrupt_storage(storage: FileStorage) -> None:
    assert answer_http01(storage, "example.com", PATH) is None
    storage.store(f"acme/{ISSUER}/challenge_tokens/example.com.json", b"{not json")
    assert answer_http01(storage, "example.com", PATH) is None
    storage.store(f"acme/{ISSUER}/challenge_tokens/example.com.json", b"[]")
    assert answer_http01(storage, "example.com", PATH) is None


def test_identifier_must_match_host(storage: FileStorage) -> None:
    # safe_key maps "exa mple.com" to "exa_mple.com": the stored identifier guards the alias.
    publish(storage, domain="exa_mple.com")
    assert answer_http01(storage, "exa mple.com", PATH) is None
    assert answer_http01(storage, "exa_mple.com", PATH) == KEYAUTH.encode()


def test_is_http01_path() -> None:
    assert is_http01_path(PATH)
    assert not is_http01_path("/")
    assert not is_http01_path("/.well-known/acme-challengex")


def test_roundtrip_json() -> None:
    ch = Http01Challenge(domain="a.example", token="t", key_authorization="t.k")
    assert Http01Challenge.from_json(ch.to_json()) == ch
    assert Http01Challenge.from_json(b'{"token": "", "keyAuthorization": "x"}') is None
    assert Http01Challenge.from_json(b"x" * 100_000) is None
