"""The `encode` directive → the `encode` handler JSON."""

from __future__ import annotations

from typing import Any

import pytest

import config.adapt.encode  # noqa: F401  (registers the directive)
from config.adapt.helper import DIRECTIVES, Helper
from config.caddyfile.dispenser import Dispenser
from config.caddyfile.lexer import tokenize
from config.errors import ConfigError


def encode(text: str) -> dict[str, Any]:
    tokens = tokenize(text, "Caddyfile")
    (value,) = DIRECTIVES["encode"](Helper(Dispenser(tokens)))
    (handler,) = value.value["handle"]
    assert handler["handler"] == "encode"
    result: dict[str, Any] = handler
    return result


def test_bare_encode_uses_zstd_then_gzip() -> None:
    h = encode("encode")
    assert h["prefer"] == ["zstd", "gzip"]
    assert h["encodings"] == {"zstd": {}, "gzip": {}}
    assert "match" not in h and "minimum_length" not in h


def test_argument_order_is_preference_order() -> None:
    h = encode("encode gzip zstd")
    assert h["prefer"] == ["gzip", "zstd"]


def test_options_block() -> None:
    h = encode(
        "encode gzip zstd {\n"
        "  minimum_length 256\n"
        "  match {\n"
        "    status 2xx 4xx 500\n"
        "    header Content-Type text/*\n"
        "    header Content-Type application/json*\n"
        "  }\n"
        "}"
    )
    assert h["minimum_length"] == 256
    assert h["match"] == {
        "status_code": [2, 4, 500],
        "headers": {"Content-Type": ["text/*", "application/json*"]},
    }
    assert h["prefer"] == ["gzip", "zstd"]


def test_encoder_blocks_with_levels() -> None:
    h = encode("encode {\n  zstd {\n    disable_checksum\n  }\n  gzip 5\n}")
    assert h["encodings"] == {"zstd": {"checksum": False}, "gzip": {"level": 5}}
    assert h["prefer"] == ["zstd", "gzip"]
    h = encode("encode {\n  zstd better\n}")
    assert h["encodings"] == {"zstd": {"level": "better"}}
    assert h["prefer"] == ["zstd"]


def test_block_encoders_come_before_arguments() -> None:
    h = encode("encode gzip {\n  zstd\n}")
    assert h["prefer"] == ["zstd", "gzip"]


def test_bad_zstd_level() -> None:
    with pytest.raises(ConfigError, match="unexpected compression level, use one of 'fastest'"):
        encode("encode {\n  zstd turbo\n}")


def test_unknown_encoder() -> None:
    with pytest.raises(ConfigError, match=r"module not registered: http\.encoders\.br"):
        encode("encode br")
    with pytest.raises(ConfigError, match=r"http\.encoders\.brotli, at Caddyfile:2"):
        encode("encode {\n  brotli\n}")


def test_bad_minimum_length() -> None:
    with pytest.raises(ConfigError, match='parsing "1k": invalid syntax'):
        encode("encode {\n  minimum_length 1k\n}")


def test_matcher_token_becomes_route_match() -> None:
    tokens = tokenize("encode /api/* gzip", "Caddyfile")
    (value,) = DIRECTIVES["encode"](Helper(Dispenser(tokens)))
    assert value.value["match"] == [{"path": ["/api/*"]}]
    assert value.value["handle"][0]["prefer"] == ["gzip"]


def test_duplicate_encoding_is_rejected_at_adapt_time() -> None:
    # Caddy adapts these and only fails when loading ("duplicated in prefer").
    with pytest.raises(ConfigError, match="encoding gzip is duplicated in prefer"):
        encode("encode zstd gzip {\n  gzip 9\n}")
    with pytest.raises(ConfigError, match="encoding zstd is duplicated in prefer"):
        encode("encode zstd zstd")
