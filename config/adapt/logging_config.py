"""Logging: the `log` directive, the `log` global option, and the top-level `logging` key.

A site's `log` makes an access logger (`log0`, `log1`, ... or a given name) that the
server maps its hostnames to; the global `log` option configures named loggers
(`default` when unnamed). Access loggers that write somewhere of their own are excluded
from the default log, as Caddy does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from config.adapt.helper import ConfigValue, Helper, JSONDict
from config.caddyfile.dispenser import Dispenser
from config.go_values import DurationError, SizeError, parse_bytes, parse_duration
from config.model import LOG_DURATION_FORMATS, LOG_LEVEL_FORMATS, LOG_TIME_FORMATS

DEFAULT_LOGGER_NAME = "default"
ACCESS_LOGGER_PREFIX = "http.log.access."
_MIB = 1024 * 1024
_DAY_NS = 24 * 3600 * 1_000_000_000


@dataclass
class NamedCustomLog:
    name: str = ""
    hostnames: list[str] = field(default_factory=list)
    log: JSONDict | None = None
    no_hostname: bool = False


def _file_writer(d: Dispenser) -> JSONDict:
    """`output file <path> { roll_* ... }` (Caddy's FileWriter)."""
    d.next()  # "file"
    if not d.next_arg():
        raise d.arg_err()
    writer: JSONDict = {"filename": d.val(), "output": "file"}
    if d.next_arg():
        raise d.arg_err()
    while d.next_block(0):
        key = d.val()
        if key == "roll_disabled":
            if d.next_arg():
                raise d.arg_err()
            writer["roll"] = False
        elif key == "roll_size":
            args = d.all_args(1)
            if args is None:
                raise d.arg_err()
            try:
                size = parse_bytes(args[0])
            except SizeError as exc:
                # Caddy's FileWriter.UnmarshalCaddyfile: "parsing size: <humanize's error>".
                raise d.err(f"parsing size: {exc}") from None
            writer["roll_size_mb"] = math.ceil(size / _MIB)
        elif key == "roll_uncompressed":
            if d.next_arg():
                raise d.arg_err()
            writer["roll_gzip"] = False
        elif key == "roll_local_time":
            if d.next_arg():
                raise d.arg_err()
            writer["roll_local_time"] = True
        elif key == "roll_keep":
            args = d.all_args(1)
            if args is None:
                raise d.arg_err()
            try:
                writer["roll_keep"] = int(args[0], 10)
            except ValueError:
                raise d.err(f"parsing roll_keep number: invalid syntax: {args[0]}") from None
        elif key == "roll_keep_for":
            args = d.all_args(1)
            if args is None:
                raise d.arg_err()
            try:
                keep = parse_duration(args[0])
            except DurationError as exc:
                raise d.err(f"parsing roll_keep_for duration: {exc}") from None
            if keep < 0:
                raise d.err(f"negative roll_keep_for duration: {args[0]}")
            writer["roll_keep_days"] = math.ceil(keep / _DAY_NS)
        elif key == "roll_interval":
            args = d.all_args(1)
            if args is None:
                raise d.arg_err()
            try:
                writer["roll_interval"] = parse_duration(args[0])
            except DurationError as exc:
                raise d.err(f"parsing roll_interval duration: {exc}") from None
        elif key == "roll_compression":
            args = d.all_args(1)
            if args is None:
                raise d.arg_err()
            compression = args[0].strip().lower()
            if compression not in ("none", "gzip", "zstd"):
                raise d.err("parsing roll_compression: must be 'none', 'gzip' or 'zstd'")
            writer["roll_compression"] = compression
        elif key == "mode":
            args = d.all_args(1)
            if args is None:
                raise d.arg_err()
            try:
                mode = int(args[0].rjust(4, "0"), 8)
            except ValueError:
                raise d.err(f"parsing mode: invalid syntax: {args[0]}") from None
            if mode:
                # Caddy writes the mode back as four octal digits
                writer["mode"] = f"{mode:04o}"
        else:
            raise d.err(f"unrecognized subdirective '{key}'")
    return writer


_ENCODER_FIELDS = (
    "message_key",
    "level_key",
    "time_key",
    "name_key",
    "caller_key",
    "stacktrace_key",
    "line_ending",
    "time_format",
    "duration_format",
    "level_format",
)


_ENCODER_CHOICES: dict[str, frozenset[str]] = {
    "time_format": LOG_TIME_FORMATS,
    "duration_format": LOG_DURATION_FORMATS,
    "level_format": LOG_LEVEL_FORMATS,
}


def _encoder(d: Dispenser) -> JSONDict:
    """`format json|console [{ ... }]`."""
    name = d.val()
    if name not in ("json", "console"):
        raise d.err(f"log format '{name}' is not supported by pyproxy (json and console are)")
    sub = d.new_from_next_segment()
    sub.next()
    if sub.next_arg():
        raise sub.arg_err()
    encoder: JSONDict = {"format": name}
    while sub.next_block(0):
        key = sub.val()
        if key == "time_local":
            if sub.next_arg():
                raise sub.arg_err()
            encoder["time_local"] = True
        elif key in _ENCODER_FIELDS:
            args = sub.all_args(1)
            if args is None:
                raise sub.arg_err()
            allowed = _ENCODER_CHOICES.get(key)
            if allowed is not None and args[0] not in allowed:
                # A Go time layout (Caddy accepts one) is not something pyproxy can format.
                raise sub.err(
                    f"{key} '{args[0]}' is not supported by pyproxy"
                    f" (one of {', '.join(sorted(allowed))})"
                )
            encoder[key] = args[0]
        else:
            raise sub.err(f"unrecognized subdirective {key}")
    return encoder


def parse_log_helper(h: Helper, global_names: set[str] | None) -> list[ConfigValue]:
    """The `log` directive (global_names is None) or the `log` global option."""
    d = h.dispenser
    d.next()
    as_global = global_names is not None
    log_name = ""
    if d.next_arg():
        log_name = d.val()
        if d.next_arg():
            raise d.arg_err()
    elif as_global:
        log_name = DEFAULT_LOGGER_NAME
    if global_names is not None:
        if log_name in global_names:
            raise d.err("duplicate global log option for: " + log_name)
        global_names.add(log_name)

    cl: JSONDict = {}
    hostnames: list[str] = []
    no_hostname = False
    seen: set[str] = set()

    def unique(subdir: str) -> None:
        if subdir in seen:
            raise d.err(f"'{subdir}' subdirective specified more than once in the same log block")
        seen.add(subdir)

    while d.next_block(0):
        key = d.val()
        if key == "hostnames":
            if as_global:
                raise d.err("hostnames is not allowed in the log global options")
            args = d.remaining_args()
            if not args:
                raise d.arg_err()
            hostnames.extend(args)
        elif key == "output":
            unique(key)
            if not d.next_arg():
                raise d.arg_err()
            module = d.val()
            if module in ("stdout", "stderr", "discard"):
                cl["writer"] = {"output": module}
                while d.next_arg():
                    pass
            elif module == "file":
                cl["writer"] = _file_writer(d.new_from_next_segment())
            else:
                raise d.err(f"log output '{module}' is not supported by pyproxy")
        elif key == "format":
            unique(key)
            if not d.next_arg():
                raise d.arg_err()
            cl["encoder"] = _encoder(d)
        elif key == "level":
            unique(key)
            if not d.next_arg():
                raise d.arg_err()
            cl["level"] = d.val()
            if d.next_arg():
                raise d.arg_err()
        elif key == "sampling":
            unique(key)
            cl["sampling"] = _sampling(d.new_from_next_segment())
        elif key in ("include", "exclude"):
            if not as_global:
                raise d.err(f"{key} is not allowed in the log directive")
            while d.next_arg():
                cl.setdefault(key, []).append(d.val())
        elif key == "no_hostname":
            unique(key)
            if d.next_arg():
                raise d.arg_err()
            no_hostname = True
        elif key == "core":
            raise d.err("log 'core' modules are not supported by pyproxy")
        else:
            raise d.err(f"unrecognized subdirective: {key}")

    value = NamedCustomLog(hostnames=hostnames, no_hostname=no_hostname)
    is_empty = not cl
    if as_global:
        value.name = log_name
    else:
        if log_name:
            value.name = log_name
        elif not is_empty:
            counter = h.state.get("logCounter", 0)
            value.name = f"log{counter}"
            h.state["logCounter"] = counter + 1
        if value.name:
            cl["include"] = [ACCESS_LOGGER_PREFIX + value.name]
    if not is_empty:
        value.log = cl
    return [ConfigValue("custom_log", value)]


def _sampling(d: Dispenser) -> JSONDict:
    d.next()
    while d.next_arg():
        pass
    sampling: JSONDict = {}
    nesting = d.nesting
    while d.next_block(nesting):
        key = d.val()
        if key in sampling:
            raise d.err(f"'{key}' specified more than once in the same sampling block")
        if not d.next_arg():
            raise d.arg_err()
        if key == "interval":
            try:
                sampling[key] = parse_duration(d.val())
            except DurationError as exc:
                raise d.err(f"failed to parse interval: {exc}") from None
        elif key in ("first", "thereafter"):
            try:
                sampling[key] = int(d.val(), 10)
            except ValueError:
                raise d.err(f"failed to parse {key}: invalid syntax") from None
        else:
            raise d.err(f"unrecognized subdirective: {key}")
    return sampling


def parse_global_log(d: Dispenser, existing: Any) -> list[ConfigValue]:
    names: set[str] = set()
    previous: list[ConfigValue] = list(existing) if isinstance(existing, list) else []
    for value in previous:
        names.add(value.value.name)
    values = parse_log_helper(Helper(dispenser=d), names)
    return previous + values


def build_logging(options: dict[str, Any], site_logs: list[NamedCustomLog]) -> JSONDict | None:
    """The top-level `logging` object, or None when nothing is configured."""
    custom: list[NamedCustomLog] = []
    has_default = False
    debug = "debug" in options

    def add(ncl: NamedCustomLog) -> None:
        nonlocal has_default
        if not ncl.name:
            return
        if ncl.name == DEFAULT_LOGGER_NAME:
            has_default = True
        if debug and ncl.log is not None and not ncl.log.get("level"):
            ncl.log["level"] = "DEBUG"
        custom.append(ncl)

    for value in options.get("log") or []:
        add(value.value)
    if not has_default and debug:
        custom.append(NamedCustomLog(name=DEFAULT_LOGGER_NAME, log={"level": "DEBUG"}))
    for ncl in site_logs:
        add(ncl)
    if not custom:
        return None

    logs: dict[str, JSONDict] = {}
    for ncl in custom:
        if ncl.name == DEFAULT_LOGGER_NAME and ncl.log is not None:
            logs[DEFAULT_LOGGER_NAME] = ncl.log
            break
    for ncl in custom:
        if ncl.log is None or ncl.name == DEFAULT_LOGGER_NAME:
            continue
        logs[ncl.name] = ncl.log
        # access logs with a destination of their own stay out of the default log
        if ncl.log.get("include"):
            default = logs.setdefault(DEFAULT_LOGGER_NAME, {})
            default["exclude"] = sorted(set(default.get("exclude", []) + ncl.log["include"]))
    if not logs:
        return None
    return {"logs": logs}
