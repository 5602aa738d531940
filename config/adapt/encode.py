"""The `encode` directive: response compression (Caddy's `encode/caddyfile.go`).

    encode [<matcher>] [<formats...>] {
        gzip [<level>]
        zstd [<level>] { level <level>; disable_checksum }
        minimum_length <length>
        match { status <code...>; header <field> [<value>] }
    }

Encodings named in the block come first in `prefer`, then those given as arguments;
with neither, Caddy uses `zstd gzip`. Block-level encoder options go into
`encodings.<name>`; the default response match and minimum length are runtime
defaults, not written into the JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from config.adapt.helper import Helper, register_handler_directive
from config.adapt.matchers import GoNumError, go_atoi, parse_named_response_matcher
from config.caddyfile.dispenser import Dispenser

JSONDict = dict[str, Any]

# klauspost/compress zstd's level names (case-insensitive), in the order Caddy lists them.
ZSTD_LEVELS = ("fastest", "better", "best", "default")

DEFAULT_ENCODINGS = ("zstd", "gzip")


def _parse_gzip(d: Dispenser) -> JSONDict:
    d.next()
    if not d.next_arg():
        return {}
    try:
        level = go_atoi(d.val())
    except GoNumError as exc:
        # Caddy returns the bare strconv error here, without a location; we add one.
        raise d.err(str(exc)) from None
    return {"level": level} if level else {}


def _check_zstd_level(d: Dispenser, level: str) -> None:
    if level.lower() not in ZSTD_LEVELS:
        names = "', '".join(ZSTD_LEVELS)
        raise d.err(f"unexpected compression level, use one of '{names}'")


def _parse_zstd(d: Dispenser) -> JSONDict:
    d.next()
    out: JSONDict = {}
    args = d.remaining_args()
    if len(args) == 1:
        _check_zstd_level(d, args[0])
        out["level"] = args[0]
    elif len(args) > 1:
        raise d.arg_err()
    nesting = d.nesting
    while d.next_block(nesting):
        option = d.val()
        if option == "level":
            level_args = d.remaining_args()
            if len(level_args) != 1:
                raise d.arg_err()
            if out.get("level"):
                raise d.err("compression level already specified")
            _check_zstd_level(d, level_args[0])
            out["level"] = level_args[0]
        elif option == "disable_checksum":
            if d.next_arg():
                raise d.arg_err()
            if "checksum" in out:
                raise d.err("checksum already specified")
            out["checksum"] = False
        else:
            raise d.err(f"unknown subdirective '{option}'")
    return out


ENCODERS: dict[str, Callable[[Dispenser], JSONDict]] = {
    "gzip": _parse_gzip,
    "zstd": _parse_zstd,
}


def parse_encode(h: Helper) -> JSONDict:
    h.next()
    prefer: list[str] = []
    encodings: dict[str, JSONDict] = {}
    handler: JSONDict = {"handler": "encode"}
    remaining_args = h.remaining_args()

    while h.next_block(0):
        option = h.val()
        if option == "minimum_length":
            if not h.next_arg():
                raise h.arg_err()
            try:
                handler["minimum_length"] = go_atoi(h.val())
            except GoNumError as exc:
                raise h.err(str(exc)) from None
            if not handler["minimum_length"]:
                del handler["minimum_length"]
        elif option == "match":
            response_matchers: dict[str, JSONDict] = {}
            parse_named_response_matcher(h.new_from_next_segment(), response_matchers)
            handler["match"] = response_matchers["match"]
        else:
            parser = ENCODERS.get(option)
            if parser is None:
                raise h.err(
                    f"getting module named 'http.encoders.{option}': "
                    f"module not registered: http.encoders.{option}"
                )
            if option in prefer:
                raise h.err(f"encoding {option} is duplicated in prefer")
            encodings[option] = parser(h.new_from_next_segment())
            prefer.append(option)

    if not prefer and not remaining_args:
        remaining_args = list(DEFAULT_ENCODINGS)
    for name in remaining_args:
        if name not in ENCODERS:
            raise h.err(
                f"finding encoder module '{name}': module not registered: http.encoders.{name}"
            )
        if name in prefer:
            # Caddy adapts this and then fails to load it (Encode.Validate); saying so
            # here gives the file and line.
            raise h.err(f"encoding {name} is duplicated in prefer")
        encodings[name] = {}
        prefer.append(name)

    if encodings:
        handler["encodings"] = encodings
    if prefer:
        handler["prefer"] = prefer
    return handler


register_handler_directive("encode", parse_encode)
