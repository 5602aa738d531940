"""Go-style values shared by the adapter and the model (config/go_values.py)."""

from __future__ import annotations

import pytest

from config.adapt import adapt_caddyfile
from config.errors import ConfigError
from config.go_values import (
    PRIVATE_RANGES,
    DurationError,
    SizeError,
    json_duration_seconds,
    parse_bytes,
    parse_duration,
)
from config.model import parse_duration as model_duration

SECOND_NS = 1_000_000_000


# -- caddy.ParseDuration (the Caddyfile form, integer nanoseconds) ------------------------------


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        ("0", 0),
        ("5s", 5 * SECOND_NS),
        ("1m30s", 90 * SECOND_NS),
        ("2h", 7200 * SECOND_NS),
        ("1.5h", 5400 * SECOND_NS),
        ("250ms", 250_000_000),
        ("10us", 10_000),
        ("1\u00b5s", 1_000),
        ("1\u03bcs", 1_000),
        ("1d", 86400 * SECOND_NS),
        ("1.5d", 36 * 3600 * SECOND_NS),
        ("1d12h", 36 * 3600 * SECOND_NS),
        ("-2s", -2 * SECOND_NS),
        ("+3s", 3 * SECOND_NS),
        (".5s", 500_000_000),
    ],
)
def test_parse_duration(text: str, expected_ns: int) -> None:
    assert parse_duration(text) == expected_ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", 'time: missing unit in duration "5"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
        ("s", 'time: invalid duration "s"'),
        (".s", 'time: invalid duration ".s"'),
        ("d", 'strconv.ParseFloat: parsing "": invalid syntax'),
        ("9999999999h", 'time: invalid duration "9999999999h"'),
        ("1" * 1025 + "s", "parsing duration: input string too long"),
    ],
)
def test_parse_duration_errors_are_worded_like_go(text: str, message: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert str(info.value) == message


# -- caddy.Duration in JSON (seconds for the model) ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1_500_000_000, 1.5),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        ("0", 0.0),
        (0, 0.0),
    ],
)
def test_json_duration_is_a_string_or_integer_nanoseconds(value: object, seconds: float) -> None:
    assert json_duration_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [True, None, [], {}, 1.5, " 5s", "5 s"])
def test_json_duration_refuses_what_caddy_cannot_unmarshal(value: object) -> None:
    with pytest.raises(DurationError):
        json_duration_seconds(value)


def test_model_duration_names_the_json_path() -> None:
    with pytest.raises(ConfigError) as info:
        model_duration("5parsecs", "apps.http.grace_period")
    assert str(info.value) == (
        "apps.http.grace_period: invalid duration '5parsecs': "
        'time: unknown unit "parsecs" in duration "5parsecs"'
    )
    with pytest.raises(ConfigError, match=r"^apps\.http\.grace_period: expected a duration"):
        model_duration(True, "apps.http.grace_period")


# -- go-humanize ParseBytes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("4096", 4096),
        ("16KB", 16_000),
        ("16KiB", 16_384),
        ("1MB", 1_000_000),
        ("1MiB", 1 << 20),
        ("4k", 4000),
        ("1.5 KiB", 1536),
        ("1,000b", 1000),
        ("2gb", 2_000_000_000),
        ("1EiB", 1 << 60),
    ],
)
def test_parse_bytes_like_humanize(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3parsecs", "unhandled size name: parsecs"),
        ("MB", 'strconv.ParseFloat: parsing "": invalid syntax'),
        ("1ZB", "unhandled size name: zb"),  # humanize's ParseBytes stops at exabytes
        ("20EiB", "too large: 20EiB"),
    ],
)
def test_parse_bytes_errors(text: str, message: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_bytes(text)
    assert str(info.value) == message


# -- private_ranges -----------------------------------------------------------------------------


def test_private_ranges_expand_the_same_everywhere() -> None:
    text = (
        "{\n\tservers {\n\t\ttrusted_proxies static private_ranges\n\t}\n}\n"
        "example.com {\n"
        "\t@lan remote_ip private_ranges\n"
        "\trespond @lan 200\n"
        "\treverse_proxy localhost:8080 {\n\t\ttrusted_proxies private_ranges\n\t}\n"
        "}\n"
    )
    config, _ = adapt_caddyfile(text, "Caddyfile")
    server = config["apps"]["http"]["servers"]["srv0"]
    assert server["trusted_proxies"]["ranges"] == list(PRIVATE_RANGES)
    handlers = [h for r in server["routes"][0]["handle"][0]["routes"] for h in r["handle"]]
    (proxy,) = [h for h in handlers if h["handler"] == "reverse_proxy"]
    assert proxy["trusted_proxies"] == list(PRIVATE_RANGES)
    (matched,) = [r for r in server["routes"][0]["handle"][0]["routes"] if r.get("match")]
    assert matched["match"][0]["remote_ip"]["ranges"] == list(PRIVATE_RANGES)


# -- errors of the adapter carry the Caddyfile location ----------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{\n\tgrace_period 5x\n}\n", 'time: unknown unit "x" in duration "5x", at Caddyfile:2'),
        (
            "{\n\tlog {\n\t\toutput file /tmp/x.log {\n\t\t\troll_size 3parsecs\n\t\t}\n\t}\n}\n",
            "parsing size: unhandled size name: parsecs, at Caddyfile:4",
        ),
        (
            "{\n\tservers {\n\t\tmax_header_size 1ZB\n\t}\n}\n",
            "parsing max_header_size: unhandled size name: zb, at Caddyfile:3",
        ),
    ],
)
def test_adapter_value_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        adapt_caddyfile(text + "example.com {\n}\n", "Caddyfile")
    assert message in str(info.value)
