"""Go-style values of Caddy configs, parsed once for the adapter and the model alike.

A leaf module: it imports nothing from this project, so every layer (the Caddyfile adapter, the
typed model, the runtime) can use it without import circles. Errors are `ValueError`s worded
like Go's, with no location; callers add the `file:line` or the JSON path.

- Durations. `parse_duration` is `caddy.ParseDuration` (Go's `time.ParseDuration` plus a `d`
  unit of 24h) giving integer nanoseconds, the form the adapter writes into JSON.
  `json_duration_seconds` reads a JSON `caddy.Duration` (`Duration.UnmarshalJSON`): a string is
  parsed as above, anything else is decoded as Go's int64 nanoseconds. The model keeps seconds.
- Sizes. `parse_bytes` is go-humanize's `ParseBytes` (`1MB` = 1000000, `1MiB` = 1048576),
  which Caddy uses for every size in a Caddyfile.
- `PRIVATE_RANGES`: the CIDRs of the `private_ranges` shortcut (Caddy's
  `internal.PrivateRangesCIDR()`), for `remote_ip`, `client_ip` and `trusted_proxies`.
"""

from __future__ import annotations

import json
import math
import re

__all__ = [
    "PRIVATE_RANGES",
    "DurationError",
    "SizeError",
    "json_duration_seconds",
    "parse_bytes",
    "parse_duration",
]

# Caddy's internal.PrivateRangesCIDR(), what `private_ranges` expands to.
PRIVATE_RANGES: tuple[str, ...] = (
    "192.168.0.0/16",
    "172.16.0.0/12",
    "10.0.0.0/8",
    "127.0.0.1/8",
    "fd00::/8",
    "::1",
)


class DurationError(ValueError):
    """A duration did not parse; the text is worded like Go's (`time: invalid duration "x"`)."""


class SizeError(ValueError):
    """A size did not parse; the text is worded like go-humanize's (`unhandled size name: x`)."""


def _quote(text: str) -> str:
    # Close enough to Go's %q for the texts durations and sizes are made of.
    return json.dumps(text, ensure_ascii=False)


# -- durations ----------------------------------------------------------------------------------

_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # MICRO SIGN: Go accepts both this and the Greek mu
    "\u03bcs": 1_000,  # GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_INT64_MAX = (1 << 63) - 1
_MAX_DURATION_INPUT = 1024  # caddy.ParseDuration's limit on the input length
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")


def parse_duration(text: str) -> int:
    """`caddy.ParseDuration`: Go's `time.ParseDuration` plus `d` (24h), in nanoseconds."""
    if len(text) > _MAX_DURATION_INPUT:
        raise DurationError("parsing duration: input string too long")
    return _go_parse_duration(_expand_days(text))


def _expand_days(text: str) -> str:
    # Caddy's loop: each `<number>d` becomes `<number*24>h` (FormatFloat 'f', -1), where the
    # number is the run of digits, dots and signs before the `d`; then Go parses the result.
    in_number = False
    num_start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "d":
            days_text = text[num_start:i]
            if not _GO_FLOAT.fullmatch(days_text):
                raise DurationError(
                    f"strconv.ParseFloat: parsing {_quote(days_text)}: invalid syntax"
                )
            hours = float(days_text) * 24.0
            text = text[:num_start] + _format_float(hours) + "h" + text[i + 1 :]
            continue  # look at the same index again, as Caddy does (i-- then i++)
        if not in_number:
            num_start = i
        in_number = ch.isdigit() or ch in ".-+"
        i += 1
    return text


# The decimal floats strconv.ParseFloat accepts from a run of digits, dots and signs.
_GO_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")


def _format_float(value: float) -> str:
    """Go's strconv.FormatFloat(v, 'f', -1, 64): the shortest exact decimal, no exponent."""
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(value, "f")
    if text.endswith(".0"):
        text = text[:-2]
    return text


def _go_parse_duration(orig: str) -> int:
    """Go's time.ParseDuration, in integer nanoseconds like Go's int64 arithmetic."""
    quoted = _quote(orig)
    text = orig
    negative = False
    if text[:1] in ("-", "+"):
        negative = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise DurationError(f"time: invalid duration {quoted}")
    total = 0
    while text:
        number = _NUMBER.match(text)
        assert number is not None  # the pattern matches the empty string
        int_part, frac_part = number.group(1), number.group(2) or ""
        if not int_part and not frac_part:
            raise DurationError(f"time: invalid duration {quoted}")
        text = text[number.end() :]
        unit_match = _UNIT.match(text)
        assert unit_match is not None
        unit = unit_match.group(0)
        if not unit:
            raise DurationError(f"time: missing unit in duration {quoted}")
        if unit not in _UNIT_NS:
            raise DurationError(f"time: unknown unit {_quote(unit)} in duration {quoted}")
        text = text[len(unit) :]
        unit_ns = _UNIT_NS[unit]
        value = int(int_part or "0") * unit_ns
        if frac_part:
            # Go scales the fraction through a float64, as done here.
            value += int(int(frac_part) * (unit_ns / 10 ** len(frac_part)))
        total += value
        if total > _INT64_MAX + (1 if negative else 0):
            raise DurationError(f"time: invalid duration {quoted}")
    return -total if negative else total


def json_duration_seconds(value: object) -> float:
    """A JSON `caddy.Duration` in seconds: a duration string, or an integer of nanoseconds.

    Caddy's `Duration.UnmarshalJSON` parses a quoted value with `ParseDuration` and anything
    else as Go's int64, so `true`, `1.5` or `null` are errors there and here.
    """
    if isinstance(value, str):
        return parse_duration(value) / 1e9
    if isinstance(value, int) and not isinstance(value, bool):
        if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
            raise DurationError(f"json: cannot unmarshal number {value} into a duration")
        return value / 1e9
    if isinstance(value, float) and value.is_integer():
        # `1e9` decodes to a float in Python; Go's int64 decoding refuses the exponent form,
        # but a whole number written so is unambiguous, and the model always accepted it.
        return value / 1e9
    raise DurationError(
        f"json: cannot unmarshal {_json_kind(value)} into a duration "
        '(a string like "1m30s" or an integer of nanoseconds)'
    )


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


# -- sizes --------------------------------------------------------------------------------------

# go-humanize's bytesSizeTable: SI and IEC names up to exa (it parses into a uint64).
_BYTE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgtpe", start=1):
    _BYTE_UNITS[_prefix] = 1000**_power
    _BYTE_UNITS[_prefix + "b"] = 1000**_power
    _BYTE_UNITS[_prefix + "i"] = 1024**_power
    _BYTE_UNITS[_prefix + "ib"] = 1024**_power
del _power, _prefix
_UINT64_LIMIT = 2.0**64


def parse_bytes(text: str) -> int:
    """go-humanize's `ParseBytes`: `512`, `1.5MB`, `64 KiB`, `1,000k` (case-insensitive)."""
    end = 0
    while end < len(text) and (text[end].isdigit() or text[end] in ".,"):
        end += 1
    number = text[:end].replace(",", "")
    if not re.fullmatch(r"[0-9]*\.?[0-9]*", number, re.ASCII) or number in ("", "."):
        raise SizeError(f"strconv.ParseFloat: parsing {_quote(number)}: invalid syntax")
    unit = text[end:].strip().lower()
    if unit not in _BYTE_UNITS:
        raise SizeError(f"unhandled size name: {unit}")
    size = float(number) * _BYTE_UNITS[unit]
    if size >= _UINT64_LIMIT or math.isinf(size):
        raise SizeError(f"too large: {text}")
    return int(size)
