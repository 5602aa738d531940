"""Access logs in Caddy's JSON shape.

A server with `logs` emits one entry per request: logger `http.log.access[.NAME]` (NAME from
`logger_names` for the request host, else `default_logger_name`), msg `handled request`,
level `info` (`error` for status ≥ 500), with `request{remote_ip, remote_port, client_ip, proto,
method, host, uri, headers}`, `bytes_read`, `user_id`, `duration` (s), `size`, `status`,
`resp_headers`; TLS requests add `request.tls` (see `tls_object`). Credentials are redacted like
Caddy does. Where an entry goes follows the top-level `logging.logs` config
(include/exclude by logger name, writer stdout/stderr/file).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from config.errors import ConfigError

REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def _headers_dict(headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in headers:
        if k.lower() == "host":
            continue  # Go keeps Host out of the header map; Caddy logs it as request.host
        name = "-".join(p[:1].upper() + p[1:].lower() for p in k.split("-"))
        if name.lower() in REDACTED:
            v = "REDACTED"
        out.setdefault(name, []).append(v)
    return out


# Go's tls.VersionTLS* constants (RFC 8446 §4.2.1 / RFC 5246 appendix E): what Caddy logs.
_TLS_VERSION_CODES: Mapping[str, int] = {
    "TLSv1": 0x0301,
    "TLSv1.1": 0x0302,
    "TLSv1.2": 0x0303,
    "TLSv1.3": 0x0304,
}


@functools.cache
def _cipher_codes() -> dict[str, int]:
    """OpenSSL cipher name -> IANA TLS cipher suite number (the uint16 Go's
    ConnectionState.CipherSuite holds). OpenSSL's own table says it: each cipher's `id` is
    0x0300_0000 | the two code bytes (RFC 8446 appendix B.4, RFC 5246 appendix A.5)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return {str(c["name"]): int(c["id"]) & 0xFFFF for c in ctx.get_ciphers()}


def tls_object(tls: Mapping[str, Any]) -> dict[str, Any]:
    """Caddy's `request.tls` (caddyhttp.LoggableTLSConnState) from the connection's TLS vars
    (proxy/http/server.py: version and cipher as OpenSSL names, the way placeholders want
    them). `ech_accepted` is always false: Python's ssl has no Encrypted Client Hello; current
    Caddy logs the field, 2.6.2 does not."""
    out: dict[str, Any] = {
        "resumed": bool(tls.get("resumed")),
        "version": _TLS_VERSION_CODES.get(str(tls.get("version") or ""), 0),
        "cipher_suite": _cipher_codes().get(str(tls.get("cipher_suite") or ""), 0),
        "proto": str(tls.get("proto") or ""),
        "server_name": str(tls.get("server_name") or ""),
        "ech_accepted": False,
    }
    return out


# zapcore.CapitalColorLevelEncoder's colours.
_LEVEL_COLORS: Mapping[str, int] = {"debug": 35, "info": 34, "warn": 33, "error": 31}


def go_float(x: float) -> str:
    """Go's `strconv.FormatFloat(x, 'g', -1, 64)` (what zap's console encoder prints for a
    float via fmt's %v): shortest digits, exponent form once the decimal exponent is < -4 or
    >= 6, so an epoch `ts` reads 1.7962888370366518e+09."""
    if x == 0:
        return "0"
    exp_s = f"{x:.17e}".partition("e")[2]
    r = repr(x)
    mant = r.replace("-", "").replace(".", "").split("e")[0].lstrip("0") or "0"
    mant = mant.rstrip("0") or "0"
    exp = int(exp_s)
    if -4 <= exp < 6:
        return r[:-2] if r.endswith(".0") else r
    sign = "-" if x < 0 else ""
    frac = mant[1:]
    return f"{sign}{mant[0]}{'.' + frac if frac else ''}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String(), from seconds."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        if not rest:
            return str(whole)
        width = len(str(unit)) - 1
        return f"{whole}.{str(rest).rjust(width, '0').rstrip('0')}"

    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    h, rem = divmod(ns, 3600 * 10**9)
    m, rem = divmod(rem, 60 * 10**9)
    out = f"{h}h" if h else ""
    out += f"{m}m" if h or m else ""
    return f"{sign}{out}{frac(rem, 10**9)}s"


class Encoder:
    """Caddy's `json` and `console` log encoders (zapcore JSON / console layouts) with the
    LogEncoderConfig options. The console layout is zap's: time, level, logger, message
    separated by tabs, then a tab and the other fields as one (spaced) JSON object, left out
    when there are none. Defaults follow Caddy: json has ts as epoch seconds and lowercase
    levels, console wall_milli time and coloured capital levels."""

    __slots__ = (
        "console",
        "duration_format",
        "level_format",
        "level_key",
        "line_ending",
        "message_key",
        "name_key",
        "time_format",
        "time_key",
        "time_local",
    )

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        cfg = cfg or {}
        self.console = cfg.get("format") == "console"
        self.message_key = str(cfg.get("message_key", "msg"))
        self.level_key = str(cfg.get("level_key", "level"))
        self.time_key = str(cfg.get("time_key", "ts"))
        self.name_key = str(cfg.get("name_key", "logger"))
        self.line_ending = str(cfg.get("line_ending", "\n"))
        # Caddy's ConsoleEncoder.Provision (2.6.2 and current): wall_milli time and coloured
        # capital levels unless set, whatever the writer is (a file gets the escapes too).
        self.time_format = str(
            cfg.get("time_format") or ("wall_milli" if self.console else "unix_seconds_float")
        )
        self.duration_format = str(cfg.get("duration_format") or "seconds")
        self.level_format = str(cfg.get("level_format") or ("color" if self.console else "lower"))
        self.time_local = bool(cfg.get("time_local"))

    @property
    def is_default_json(self) -> bool:
        return (
            not self.console
            and (self.message_key, self.level_key, self.time_key, self.name_key)
            == ("msg", "level", "ts", "logger")
            and self.line_ending == "\n"
            and self.time_format == "unix_seconds_float"
            and self.duration_format == "seconds"
            and self.level_format == "lower"
        )

    def _time(self, ts: float) -> float | int | str:
        fmt = self.time_format
        if fmt == "unix_seconds_float":
            return ts
        if fmt == "unix_milli_float":
            return ts * 1000.0
        if fmt == "unix_nano":
            return int(ts * 1e9)
        local = fmt == "iso8601" or self.time_local  # zap's ISO8601 encoder keeps the zone
        dt = datetime.datetime.fromtimestamp(ts, tz=None if local else datetime.UTC)
        if local:
            dt = dt.astimezone()
        zone = dt.strftime("%z")
        zone_colon = "Z" if zone in ("+0000", "") else f"{zone[:3]}:{zone[3:]}"
        if fmt == "iso8601":  # 2006-01-02T15:04:05.000Z0700
            z = "Z" if zone in ("+0000", "") else zone
            return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}{z}"
        if fmt == "rfc3339":
            return dt.strftime("%Y-%m-%dT%H:%M:%S") + zone_colon
        if fmt == "rfc3339_nano":
            frac = f"{dt.microsecond:06d}000".rstrip("0")
            return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + zone_colon
        if fmt == "wall":
            return dt.strftime("%Y/%m/%d %H:%M:%S")
        if fmt == "wall_milli":
            return dt.strftime("%Y/%m/%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"
        if fmt == "wall_nano":
            return dt.strftime("%Y/%m/%d %H:%M:%S.") + f"{dt.microsecond:06d}000"
        return dt.strftime("%d/%b/%Y:%H:%M:%S ") + (zone or "+0000")  # common_log

    def _level(self, level: str) -> str:
        if self.level_format == "lower":
            return level
        if self.level_format == "upper":
            return level.upper()
        return f"\x1b[{_LEVEL_COLORS.get(level, 31)}m{level.upper()}\x1b[0m"

    def encode(self, entry: Mapping[str, Any]) -> str:
        fields = {k: v for k, v in entry.items() if k not in ("level", "ts", "logger", "msg")}
        if "duration" in fields and isinstance(fields["duration"], float):
            if self.duration_format == "nano":
                fields["duration"] = round(fields["duration"] * 1e9)
            elif self.duration_format == "string":
                fields["duration"] = go_duration(fields["duration"])
        level = self._level(str(entry.get("level", "info")))
        ts = self._time(float(entry.get("ts", 0.0)))
        logger = entry.get("logger")
        msg = str(entry.get("msg", ""))
        if self.console:
            parts = [go_float(ts) if isinstance(ts, float) else str(ts), level]
            if logger:
                parts.append(str(logger))
            parts.append(msg)
            line = "\t".join(parts)
            if fields:
                # zap's console encoder writes the fields with its spaced JSON encoder.
                line += "\t" + json.dumps(fields, separators=(", ", ": "), default=str)
            return line + self.line_ending
        head: dict[str, Any] = {self.level_key: level, self.time_key: ts}
        if logger:
            head[self.name_key] = logger
        head[self.message_key] = msg
        head.update(fields)
        return json.dumps(head, separators=(",", ":"), default=str) + self.line_ending


_DEFAULT_JSON = Encoder()


# Caddy/zap level names on Python's logging scale (zap: debug < info < warn < error < dpanic <
# panic < fatal); a log's `level` is the least severe level it writes.
LEVELS: Mapping[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "DPANIC": 42,
    "PANIC": 45,
    "FATAL": logging.CRITICAL,
}


def level_number(level: object) -> int:
    """A Caddy level name (any case; empty means INFO, as in Caddy) on Python's scale."""
    return LEVELS.get(str(level or "INFO").upper(), logging.INFO)


def logger_allowed(include: list[str], exclude: list[str], name: str) -> bool:
    """Caddy's CustomLog.loggerAllowed for a log entry's logger `name`: no lists takes all;
    else the longest matching namespace decides (include must match when it is given), `*`
    in exclude rejects every named logger and `.` the unnamed (core) one."""
    if not include and not exclude:
        return True
    if name not in ("", "*", "."):
        name += "."
    accept = max((len(n) for n in include if name.startswith(n + ".")), default=0)
    if include and accept == 0:
        return False
    reject = 0
    for n in exclude:
        if (n == "*" and name != ".") or (n == "." and name == "."):
            return False
        if name.startswith(n + ".") and len(n) > reject:
            reject = len(n)
    if reject > accept:
        return False
    return accept > reject or (not include and reject == 0)


class _Sink:
    __slots__ = ("encoder", "exclude", "include", "level", "owns_stream", "stream")

    def __init__(
        self,
        stream: TextIO,
        include: list[str],
        exclude: list[str],
        level: int,
        encoder: Encoder = _DEFAULT_JSON,
    ) -> None:
        self.stream = stream
        self.include = include
        self.exclude = exclude
        self.level = level
        self.encoder = encoder
        self.owns_stream = False  # a file this sink opened (closed when it is replaced)

    def wants(self, logger: str, level: int) -> bool:
        return level >= self.level and logger_allowed(self.include, self.exclude, logger)


def build_sinks(logging_cfg: Mapping[str, Any]) -> list[tuple[_Sink, Mapping[str, Any]]]:
    """One sink per `logging.logs` entry whose writer is not `discard` (validated by
    config.model._load_logging), with the entry it came from."""
    sinks: list[tuple[_Sink, Mapping[str, Any]]] = []
    for name, log in dict(logging_cfg.get("logs") or {}).items():
        try:
            stream = _open_writer(dict(log.get("writer") or {}))
        except OSError as exc:
            _close_sinks([sink for sink, _ in sinks])
            # Caddy fails the config load when a writer cannot be opened (CustomLog.provision).
            raise ConfigError(
                f"logging.logs.{name}.writer: opening log file: {exc.strerror or exc}"
                f" ({exc.filename or log['writer'].get('filename')})"
            ) from None
        if stream is None:
            continue
        sink = _Sink(
            stream,
            list(log.get("include") or []),
            list(log.get("exclude") or []),
            level_number(log.get("level")),
            Encoder(log.get("encoder")) if log.get("encoder") else _DEFAULT_JSON,
        )
        sink.owns_stream = stream not in (sys.stdout, sys.stderr)
        sinks.append((sink, log))
    return sinks


def check_log_writers(logging_cfg: Mapping[str, Any]) -> None:
    """Open (and close) every writer of `logging.logs`: the supervisor's check before a config
    goes to the workers, so an unwritable log file fails the load and the old config stays."""
    _close_sinks([sink for sink, _ in build_sinks(logging_cfg)])


def _has_default(logging_cfg: Mapping[str, Any]) -> bool:
    return "default" in dict(logging_cfg.get("logs") or {})


def _close_sinks(sinks: list[_Sink]) -> None:
    for sink in sinks:
        if sink.owns_stream:
            try:
                sink.stream.close()
            except OSError:
                pass


class AccessLog:
    """Routes access entries to the configured writers, each at or above its log's level
    (an entry is `info`, or `error` for a 5xx: Caddy's Server.logRequest)."""

    def __init__(self, logging_cfg: Mapping[str, Any]) -> None:
        self.sinks = [sink for sink, _ in build_sinks(logging_cfg)]
        if not _has_default(logging_cfg):  # Caddy's default log: stderr at INFO
            self.sinks.append(_Sink(sys.stderr, [], [], logging.INFO))

    def close(self) -> None:
        """Close the files this config's access logs opened (a reload opens its own; without
        this, every reload leaked one descriptor per file log)."""
        _close_sinks(self.sinks)

    def write(self, logger: str, entry: dict[str, Any]) -> None:
        line = ""
        level = level_number(entry.get("level"))
        for sink in self.sinks:
            if sink.wants(logger, level):
                try:
                    if sink.encoder.is_default_json:
                        if not line:
                            line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
                        sink.stream.write(line)
                    else:
                        sink.stream.write(sink.encoder.encode(entry))
                    sink.stream.flush()
                except (OSError, ValueError):
                    pass


def _open_writer(writer: Mapping[str, Any]) -> TextIO | None:
    """stdout, stderr, discard (None) or file; config.model._load_logging refuses the rest
    (net, roll options) so nothing reaches here that this cannot honour."""
    output = writer.get("output") or "stderr"
    if output == "stdout":
        return sys.stdout
    if output == "discard":
        return None
    if output == "file":
        filename = str(writer.get("filename"))
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        return open(filename, "a", encoding="utf-8", buffering=1)
    return sys.stderr


def loggable_request(req: Any) -> dict[str, Any]:
    """Caddy's `request` object (caddyhttp.LoggableHTTPRequest)."""
    request: dict[str, Any] = {
        "remote_ip": req.remote_ip,
        "remote_port": str(req.remote_port),
        "client_ip": req.client_ip,
        "proto": req.proto,
        "method": req.vars.get("_orig_method", req.method),
        "host": req.host,
        "uri": req.vars.get("_orig_uri", req.uri),
        "headers": _headers_dict(req.headers),
    }
    tls = req.vars.get("tls")
    if tls is not None:
        request["tls"] = tls_object(tls)
    return request


def access_entry(ex: Any, duration_s: float, status: int, logger: str) -> dict[str, Any]:
    req = ex.req
    request = loggable_request(req)
    return {
        "level": "error" if status >= 500 else "info",
        "ts": time.time(),
        "logger": logger,
        "msg": "handled request",
        "request": request,
        "bytes_read": req.body_received,
        "user_id": "",
        "duration": duration_s,
        "size": ex.bytes_written,
        "status": status,
        "resp_headers": _headers_dict(ex.resp_headers),
    }


# ---- pyproxy's own (non-access) logs -------------------------------------------------------------

# Python logger -> the Caddy logger name whose messages it carries (what a log collector or a
# `log { include … }` filter expects to see).
_CADDY_LOGGERS: tuple[tuple[str, str], ...] = (
    ("pyproxy.admin", "admin"),
    ("pyproxy.certs", "tls"),
    ("pyproxy.tls", "tls"),
    ("pyproxy.worker", "http"),
    ("acme_client.issuer", "tls.issuance.acme"),
    ("acme_client.manager", "tls.obtain"),
    ("acme_client.local_ca", "pki.ca.local"),
)
_PY_LEVELS: Mapping[int, str] = {10: "debug", 20: "info", 30: "warn", 40: "error", 50: "fatal"}


def caddy_logger_name(python_name: str) -> str:
    for prefix, caddy in _CADDY_LOGGERS:
        if python_name == prefix or python_name.startswith(prefix + "."):
            return caddy
    return "" if python_name in ("pyproxy", "root") else python_name


def record_entry(record: logging.LogRecord, exc_text: str = "") -> dict[str, Any]:
    """A Python log record as a Caddy log entry: level, ts, logger (Caddy's name for it), msg,
    then a record's `caddy_fields` (extra=) and an exception as `error`."""
    entry: dict[str, Any] = {
        "level": _PY_LEVELS.get(record.levelno, "info"),
        "ts": record.created,
        "logger": caddy_logger_name(record.name),
        "msg": record.getMessage(),
    }
    fields = getattr(record, "caddy_fields", None)
    if isinstance(fields, dict):
        entry.update(fields)
    if exc_text:
        entry["error"] = exc_text
    return entry


class CaddyFormatter(logging.Formatter):
    """Formats Python log records as Caddy's default logger does: JSON lines
    `{"level","ts","logger","msg",...}` (what Docker log collectors parse), or zap's console
    layout when `console` (Caddy picks that when stderr is a terminal)."""

    def __init__(self, console: bool) -> None:
        super().__init__()
        self.encoder = Encoder({"format": "console" if console else "json"})

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else ""
        return self.encoder.encode(record_entry(record, exc)).rstrip("\n")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class OwnLogHandler(logging.Handler):
    """pyproxy's process log (everything but access entries, which AccessLog writes) routed
    like Caddy's logs: to every `logging.logs` entry whose include/exclude takes the record's
    Caddy logger name and whose level it reaches, in that log's encoder. Without a `default`
    log, Caddy's default: stderr at INFO, console on a terminal, JSON otherwise. An encoder
    left unset is chosen the same way from the log's writer. `configure` swaps the logs in
    place (a reload), so filters added to this handler stay."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.fallback = stream if stream is not None else sys.stderr
        self.sinks: list[_Sink] = []
        self.configure({})

    def configure(self, logging_cfg: Mapping[str, Any]) -> None:
        console = Encoder({"format": "console"})
        sinks: list[_Sink] = []
        for sink, log in build_sinks(logging_cfg):
            if not log.get("encoder") and _is_terminal(sink.stream):
                sink.encoder = console
            sinks.append(sink)
        if not _has_default(logging_cfg):
            fallback = _Sink(self.fallback, [], [], logging.INFO)
            if _is_terminal(self.fallback):
                fallback.encoder = console
            sinks.append(fallback)
        self.acquire()
        try:
            old, self.sinks = self.sinks, sinks
        finally:
            self.release()
        _close_sinks(old)
        # The logger level is the least severe any log takes: records below it cost nothing.
        logging.getLogger().setLevel(min((s.level for s in sinks), default=logging.INFO))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            name = caddy_logger_name(record.name)
            wanted = [s for s in self.sinks if s.wants(name, record.levelno)]
            if not wanted:
                return
            exc = ""
            if record.exc_info:
                exc = logging.Formatter().formatException(record.exc_info)
            entry = record_entry(record, exc)
            for sink in wanted:
                sink.stream.write(sink.encoder.encode(entry))
                sink.stream.flush()
        except (OSError, ValueError):
            self.handleError(record)


_OWN_HANDLER: OwnLogHandler | None = None


def own_log_handler(stream: TextIO) -> OwnLogHandler:
    """The handler of pyproxy's process log (one per process: `apply_logging` reconfigures
    it from each loaded config)."""
    global _OWN_HANDLER
    _OWN_HANDLER = OwnLogHandler(stream)
    return _OWN_HANDLER


def apply_logging(logging_cfg: Mapping[str, Any]) -> None:
    """Point the process log at a loaded config's `logging.logs` (start, every reload): the
    supervisor and each worker call this once the config is in effect."""
    if _OWN_HANDLER is None:
        return
    try:
        _OWN_HANDLER.configure(logging_cfg)
    except ConfigError as exc:
        # check_log_writers passed in the supervisor moments ago; only a file that became
        # unwritable since gets here. The old logs stay, and say so.
        logging.getLogger("pyproxy").error("%s; the previous logs stay", exc)


# ---- logger names per request host (Caddy's ServerLogConfig.getLoggerName) ----------------------


def _mapped_name(logger_names: Mapping[str, Any], key: str) -> str | None:
    value = logger_names.get(key)
    if value is None:
        return None
    if isinstance(value, list):  # current Caddy maps a host to a list of names: the first
        return str(value[0]) if value else ""
    return str(value)


def mapped_logger_name(logger_names: Mapping[str, Any], host_header: str) -> str | None:
    """The name `logger_names` gives a request's Host: the exact Host, then the Host without
    its port, then wildcard forms (`*.example.com`, `*.*.com`, …); None when unmapped (Caddy's
    ServerLogConfig.getLoggerName, before its fallback to `default_logger_name`)."""
    if not logger_names:
        return None
    found = _mapped_name(logger_names, host_header)
    if found is not None:
        return found
    host = host_header
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    found = _mapped_name(logger_names, host)
    if found is not None:
        return found
    labels = host.split(".")
    for i in range(len(labels)):
        labels[i] = "*"
        found = _mapped_name(logger_names, ".".join(labels))
        if found is not None:
            return found
    return None


def site_logger_name(logs: Any, host_header: str) -> str:
    """The suffix a server's access and error loggers take for a request (`http.log.access.NAME`,
    `http.log.error.NAME`; Caddy's wrapLogger names both); `""` means the bare logger."""
    mapped = mapped_logger_name(logs.logger_names, host_header)
    return mapped if mapped else str(logs.default_logger_name or "")


# ---- handler errors (Caddy's http.log.error) ---------------------------------------------------

error_log = logging.getLogger("http.log.error")


def log_handler_error(
    ex: Any, status: int, message: str, err_id: str, logger_suffix: str = ""
) -> None:
    """Caddy's server logs a handler error as `http.log.error`: level error for a 5xx, debug
    otherwise, msg the error text, fields request, duration, status, err_id (err_trace, Go's
    caller frame, has no Python equivalent and is left out). Free when the level is off."""
    level = logging.ERROR if status >= 500 else logging.DEBUG
    if not error_log.isEnabledFor(level):
        return
    req = ex.req
    request = loggable_request(req)
    fields = {
        "request": request,
        "duration": time.monotonic() - req.start_time,
        "status": status,
        "err_id": err_id,
    }
    # A server with `logs` names its error logger like its access logger (Caddy 2.6.2 and
    # current: `http.log.error.log0`), so `log { include … }` filters see the site's name.
    logger = error_log.getChild(logger_suffix) if logger_suffix else error_log
    logger.log(level, "%s", message or f"HTTP {status}", extra={"caddy_fields": fields})
