"""The built-in site directives (Caddy's builtins.go plus rewrite/uri/handle_path/respond/...).

`bind`, `tls` and `log` contribute server settings; the others are HTTP handlers that
become routes. Real Caddy directives that pyproxy does not implement are listed in
`UNSUPPORTED_DIRECTIVES` so they are rejected by name, never silently skipped.
"""

from __future__ import annotations

import html
from typing import Any

from config.adapt.addresses import BindValue
from config.adapt.directive_order import (
    build_subroute,
    current_order,
    parse_segment_as_config,
    parse_segment_as_subroute,
    subroute_handler,
)
from config.adapt.helper import (
    ConfigValue,
    Helper,
    JSONDict,
    register_directive,
    register_handler_directive,
)
from config.adapt.logging_config import parse_log_helper
from config.adapt.tls_app import (
    implicit_acme_issuers,
    parse_issuer_module,
)

# Directives of current Caddy (standard distribution) that pyproxy does not implement.
UNSUPPORTED_DIRECTIVES = frozenset(
    {
        "acme_server",
        "basic_auth",
        "basicauth",
        "copy_response",
        "copy_response_headers",
        "file_server",
        "forward_auth",
        "fs",
        "intercept",
        "invoke",
        "log_append",
        "map",
        "metrics",
        "php_fastcgi",
        "push",
        "request_body",
        "request_header",
        "templates",
        "timeouts",
        "tracing",
        "try_files",
    }
)

TLS_PROTOCOLS = ("tls1.2", "tls1.3")
TLS_CURVES = ("x25519", "secp256r1", "secp384r1", "secp521r1", "x25519mlkem768")
TLS_CIPHER_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)


def weak_string(text: str) -> Any:
    """Caddy's WeakString JSON: true/false and integers are written unquoted."""
    if text == "true":
        return True
    if text == "false":
        return False
    try:
        if text.lstrip("+-").isdigit():
            return int(text, 10)
    except ValueError:
        pass
    return text


# -- server settings ----------------------------------------------------------------------------


def parse_bind(h: Helper) -> list[ConfigValue]:
    h.next()
    addresses = h.remaining_args()
    protocols: list[str] = []
    while h.next_block(0):
        if h.val() != "protocols":
            raise h.err(f"unknown subdirective: {h.val()}")
        protocols = h.remaining_args()
        if not protocols:
            raise h.err("protocols requires one or more arguments")
    return [ConfigValue("bind", BindValue(tuple(addresses), tuple(protocols)))]


def _acme(acme: JSONDict | None) -> JSONDict:
    return acme if acme is not None else {"module": "acme"}


def parse_tls(h: Helper) -> list[ConfigValue]:
    h.next()
    cp: JSONDict = {}
    file_loader: list[JSONDict] = []
    folder_loader: list[str] = []
    any_tag: list[str] = []
    acme: JSONDict | None = None
    internal: JSONDict | None = None
    issuers: list[JSONDict] = []
    key_type = ""
    on_demand = reuse_keys = force_automate = False
    renewal_ratio = 0.0

    first_line = h.remaining_args()
    if len(first_line) == 1:
        arg = first_line[0]
        if arg == "internal":
            internal = {"module": "internal"}
        elif arg == "force_automate":
            force_automate = True
        elif "@" not in arg:
            raise h.err(
                "single argument must either be 'internal', 'force_automate', or an email address"
            )
        else:
            acme = {"module": "acme", "email": arg}
    elif len(first_line) == 2:
        cert_file, key_file = first_line
        tags: dict[str, str] = h.state.setdefault("tlsCertTags", {})
        tag = tags.get(cert_file)
        if tag is None:
            tag = f"cert{len(tags)}"
            file_loader.append({"certificate": cert_file, "key": key_file, "tags": [tag]})
            tags[cert_file] = tag
        any_tag.append(tag)
    elif first_line:
        raise h.arg_err()

    has_block = False
    while h.next_block(0):
        has_block = True
        key = h.val()
        if key == "protocols":
            args = h.remaining_args()
            if not args:
                raise h.err("protocols requires one or two arguments")
            for name, value in zip(("protocol_min", "protocol_max"), args[:2], strict=False):
                if value not in TLS_PROTOCOLS:
                    raise h.err(f"wrong protocol name or protocol not supported: '{value}'")
                cp[name] = value
        elif key == "ciphers":
            while h.next_arg():
                if h.val() not in TLS_CIPHER_SUITES:
                    raise h.err(
                        f"wrong cipher suite name or cipher suite not supported: '{h.val()}'"
                    )
                cp.setdefault("cipher_suites", []).append(h.val())
        elif key == "curves":
            while h.next_arg():
                if h.val() not in TLS_CURVES:
                    raise h.err(f"Wrong curve name or curve not supported: '{h.val()}'")
                cp.setdefault("curves", []).append(h.val())
        elif key == "alpn":
            args = h.remaining_args()
            if not args:
                raise h.arg_err()
            cp["alpn"] = args
        elif key == "load":
            folder_loader.extend(h.remaining_args())
        elif key == "ca":
            args = h.remaining_args()
            if len(args) != 1:
                raise h.arg_err()
            acme = _acme(acme)
            acme["ca"] = args[0]
        elif key == "key_type":
            args = h.remaining_args()
            if len(args) != 1:
                raise h.arg_err()
            key_type = args[0]
        elif key == "eab":
            args = h.remaining_args()
            if len(args) != 2:
                raise h.arg_err()
            acme = _acme(acme)
            acme["external_account"] = {"key_id": args[0], "mac_key": args[1]}
        elif key == "issuer":
            if not h.next_arg():
                raise h.arg_err()
            issuers.append(parse_issuer_module(h.dispenser))
        elif key == "ca_root":
            args = h.remaining_args()
            if len(args) != 1:
                raise h.arg_err()
            acme = _acme(acme)
            acme.setdefault("trusted_roots_pem_files", []).append(args[0])
        elif key == "on_demand":
            if h.next_arg():
                raise h.arg_err()
            on_demand = True
        elif key == "reuse_private_keys":
            if h.next_arg():
                raise h.arg_err()
            reuse_keys = True
        elif key == "insecure_secrets_log":
            if not h.next_arg():
                raise h.arg_err()
            cp["insecure_secrets_log"] = h.val()
        elif key == "renewal_window_ratio":
            args = h.remaining_args()
            if len(args) != 1:
                raise h.arg_err()
            try:
                renewal_ratio = float(args[0])
            except ValueError:
                raise h.err(
                    f'parsing renewal_window_ratio: strconv.ParseFloat: parsing "{args[0]}": '
                    "invalid syntax"
                ) from None
            if renewal_ratio <= 0 or renewal_ratio >= 1:
                raise h.err("renewal_window_ratio must be between 0 and 1 (exclusive)")
        elif key in (
            "client_auth",
            "get_certificate",
            "dns",
            "resolvers",
            "propagation_delay",
            "propagation_timeout",
            "dns_ttl",
            "dns_challenge_override_domain",
        ):
            raise h.err(f"tls subdirective '{key}' is not supported by pyproxy")
        else:
            raise h.err(f"unknown subdirective: {key}")

    if not first_line and not has_block:
        raise h.arg_err()

    values: list[ConfigValue] = []
    if file_loader:
        values.append(ConfigValue("tls.cert_loader", ("load_files", file_loader)))
    if folder_loader:
        values.append(ConfigValue("tls.cert_loader", ("load_folders", folder_loader)))
    if issuers and (acme is not None or internal is not None):
        raise h.err(
            "cannot mix issuer subdirective (explicit issuers) with other issuer-specific "
            "subdirectives (implicit issuers)"
        )
    if acme is not None and internal is not None:
        raise h.err("cannot create both ACME and internal certificate issuers")
    if issuers:
        values.extend(ConfigValue("tls.cert_issuer", i) for i in issuers)
    elif acme is not None:
        values.extend(
            ConfigValue("tls.cert_issuer", i) for i in implicit_acme_issuers(h.options, acme)
        )
    elif internal is not None:
        values.append(ConfigValue("tls.cert_issuer", internal))
    if key_type:
        values.append(ConfigValue("tls.key_type", key_type))
    if on_demand:
        values.append(ConfigValue("tls.on_demand", True))
    if reuse_keys:
        values.append(ConfigValue("tls.reuse_private_keys", True))
    if renewal_ratio > 0:
        values.append(ConfigValue("tls.renewal_window_ratio", renewal_ratio))
    if force_automate:
        values.append(ConfigValue("tls.force_automate", True))
    if any_tag:
        cp["certificate_selection"] = {"any_tag": any_tag}
    values.append(ConfigValue("tls.connection_policy", cp))
    return values


def parse_log(h: Helper) -> list[ConfigValue]:
    return parse_log_helper(h, None)


# -- handlers -----------------------------------------------------------------------------------


def parse_root(h: Helper) -> list[ConfigValue]:
    h.next()
    count = h.count_remaining_args()
    if count == 0:
        raise h.err("too few arguments; must have at least a root path")
    if count > 2:
        raise h.err("too many arguments; should only be a matcher and a path")
    if count == 1:
        h.next_arg()
        h.block_state["root"] = h.val()
        return h.new_route(None, {"handler": "vars", "root": h.val()})
    matcher_set = h.extract_matcher_set()
    h.next()
    if not h.next_arg():
        raise h.arg_err()
    if matcher_set is None:
        h.block_state["root"] = h.val()
    return h.new_route(matcher_set, {"handler": "vars", "root": h.val()})


def parse_vars(h: Helper) -> JSONDict:
    h.next()
    handler: JSONDict = {"handler": "vars"}

    def next_var(header_line: bool) -> None:
        if header_line and not h.next_arg():
            return
        name = h.val()
        if not h.next_arg():
            raise h.arg_err()
        handler[name] = h.scalar_val()
        if h.next_arg():
            raise h.arg_err()

    next_var(True)
    while h.next_block(0):
        next_var(False)
    return handler


_META_REDIRECT = """<!DOCTYPE html>
<html>
	<head>
		<title>Redirecting...</title>
		<script>window.location.replace("{0}");</script>
		<meta http-equiv="refresh" content="0; URL='{0}'">
	</head>
	<body>Redirecting to <a href="{0}">{0}</a>...</body>
</html>
"""


def _go_html_escape(text: str) -> str:
    # Go's html.EscapeString escapes <, >, &, ' and " (as &#39; and &#34;)
    return html.escape(text, quote=True).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


def parse_redir(h: Helper) -> JSONDict:
    h.next()
    if not h.next_arg():
        raise h.arg_err()
    to = h.val()
    code = h.val() if h.next_arg() else ""
    handler: JSONDict = {"handler": "static_response"}
    if code == "permanent":
        code = "301"
    elif code in ("temporary", ""):
        code = "302"
    elif code == "html":
        safe = _go_html_escape(to)
        handler["body"] = _META_REDIRECT.format(safe)
        handler["headers"] = {"Content-Type": ["text/html; charset=utf-8"]}
        code = "200"
    elif not code.startswith("{"):
        try:
            number = int(code, 10)
        except ValueError:
            raise h.err(f"Not a supported redir code type or not valid integer: '{code}'") from None
        if number < 300 or (number > 399 and number != 401):
            raise h.err(f"Redir code not in the 3xx range or 401: '{number}'")
    if code != "200":
        handler["headers"] = {"Location": [to]}
    handler["status_code"] = weak_string(code)
    return handler


def _status_or_text(h: Helper, text_key: str, handler: JSONDict) -> None:
    args = h.remaining_args()
    if len(args) == 1:
        arg = args[0]
        if len(arg) == 3 and arg.isdigit() and int(arg) > 0:
            handler["status_code"] = weak_string(arg)
        elif arg:
            handler[text_key] = arg
    elif len(args) == 2:
        if args[0]:
            handler[text_key] = args[0]
        if args[1]:
            handler["status_code"] = weak_string(args[1])
    else:
        raise h.arg_err()


def parse_respond(h: Helper) -> JSONDict:
    h.next()
    handler: JSONDict = {"handler": "static_response"}
    _status_or_text(h, "body", handler)
    while h.next_block(0):
        key = h.val()
        if key == "body":
            if handler.get("body"):
                raise h.err("body already specified")
            args = h.all_args(1)
            if args is None:
                raise h.arg_err()
            if args[0]:
                handler["body"] = args[0]
        elif key == "close":
            if handler.get("close"):
                raise h.err("close already specified")
            handler["close"] = True
        else:
            raise h.err(f"unrecognized subdirective '{key}'")
    return handler


def parse_abort(h: Helper) -> JSONDict:
    h.next()
    if h.next() or h.next_block(0):
        raise h.arg_err()
    return {"abort": True, "handler": "static_response"}


def parse_error(h: Helper) -> JSONDict:
    h.next()
    handler: JSONDict = {"handler": "error"}
    _status_or_text(h, "error", handler)
    while h.next_block(0):
        key = h.val()
        if key != "message":
            raise h.err(f"unrecognized subdirective '{key}'")
        if handler.get("error"):
            raise h.err("message already specified")
        args = h.all_args(1)
        if args is None:
            raise h.arg_err()
        if args[0]:
            handler["error"] = args[0]
    return handler


def parse_route(h: Helper) -> JSONDict:
    values = parse_segment_as_config(h)
    for value in values:
        if value.cls != "route":
            raise h.err(
                f"{value.directive} directive returned something other than an HTTP route or "
                "subroute (only handler directives can be used in routes)"
            )
    return subroute_handler(
        build_subroute(values, h.group_counter, False, current_order(h.options))
    )


def parse_handle(h: Helper) -> JSONDict:
    return parse_segment_as_subroute(h)


def parse_handle_path(h: Helper) -> list[ConfigValue]:
    h.next()
    if not h.next_arg():
        raise h.arg_err()
    path = h.val()
    if not path.startswith("/"):
        raise h.err(f"path matcher must begin with '/', got {path}")
    if path.endswith("/*"):
        strip = path[:-2]
    elif path.endswith("*"):
        strip = path[:-1]
    else:
        strip = path
    h.reset()
    h.next()
    subroute = parse_segment_as_subroute(h)
    strip_route: JSONDict = {"handle": [{"handler": "rewrite", "strip_path_prefix": strip}]}
    subroute["routes"] = [strip_route, *subroute.get("routes", [])]
    return h.new_route({"path": [path]}, subroute)


def parse_handle_errors(h: Helper) -> list[ConfigValue]:
    h.next()
    expression = ""
    args = h.remaining_args()
    if args:
        codes: list[str] = []
        for arg in args:
            if len(arg) != 3:
                raise h.err(f"bad status value '{arg}'")
            if arg.endswith("xx"):
                digit = arg[:1]
                if not digit.isdigit():
                    raise h.err(
                        f"bad status value '{digit}': strconv.Atoi: parsing \"{digit}\": "
                        "invalid syntax"
                    )
                if expression:
                    expression += " || "
                expression += (
                    f"{{http.error.status_code}} >= {digit}00 && "
                    f"{{http.error.status_code}} <= {digit}99"
                )
                continue
            if not arg.isdigit():
                raise h.err(
                    f"bad status value '{arg}': strconv.Atoi: parsing \"{arg}\": invalid syntax"
                )
            codes.append(arg)
        if codes:
            if expression:
                expression += " || "
            expression += "{http.error.status_code} in [" + ", ".join(codes) + "]"
        h.reset()
        h.next()
        h.remaining_args()
        h.prev()
    else:
        h.prev()
    subroute = parse_segment_as_subroute(h)
    route: JSONDict = {"handle": [subroute]}
    if expression:
        route["match"] = [{"expression": expression}]
    return [ConfigValue("error_route", [route])]


def parse_rewrite(h: Helper) -> list[ConfigValue]:
    h.next()
    count = h.count_remaining_args()
    if count == 0:
        raise h.err("too few arguments; must have at least a rewrite URI")
    if count > 2:
        raise h.err("too many arguments; should only be a matcher and a URI")
    if count == 1:
        h.next_arg()
        return h.new_route(None, {"handler": "rewrite", "uri": h.val()})
    matcher_set = h.extract_matcher_set()
    h.next()
    h.next()
    return h.new_route(matcher_set, {"handler": "rewrite", "uri": h.val()})


def parse_method(h: Helper) -> JSONDict:
    h.next()
    if not h.next_arg():
        raise h.arg_err()
    method = h.val()
    if h.next_arg():
        raise h.arg_err()
    return {"handler": "rewrite", "method": method}


def _query_op(h: Helper, ops: JSONDict, args: list[str]) -> None:
    key = args[0]
    if key.startswith("-"):
        if len(args) != 1:
            raise h.arg_err()
        ops.setdefault("delete", []).append(key.lstrip("-"))
    elif key.startswith("+"):
        if len(args) != 2:
            raise h.arg_err()
        ops.setdefault("add", []).append({"key": key.lstrip("+"), "val": args[1]})
    elif ">" in key:
        if len(args) != 1:
            raise h.arg_err()
        parts = key.split(">")
        ops.setdefault("rename", []).append({"key": parts[0], "val": parts[1]})
    elif len(args) == 3:
        ops.setdefault("replace", []).append(
            {"key": key, "search_regexp": args[1], "replace": args[2]}
        )
    else:
        if len(args) != 2:
            raise h.arg_err()
        ops.setdefault("set", []).append({"key": key, "val": args[1]})


def parse_uri(h: Helper) -> JSONDict:
    h.next()
    args = h.remaining_args()
    if not args:
        raise h.arg_err()
    handler: JSONDict = {"handler": "rewrite"}
    op = args[0]
    if op in ("strip_prefix", "strip_suffix"):
        if len(args) != 2:
            raise h.arg_err()
        handler["strip_path_" + op.removeprefix("strip_")] = args[1]
    elif op == "replace":
        if len(args) not in (3, 4):
            raise h.arg_err()
        substring: JSONDict = {"find": args[1], "replace": args[2]}
        if len(args) == 4:
            try:
                limit = int(args[3], 10)
            except ValueError:
                raise h.err(
                    f'limit must be an integer; invalid: strconv.Atoi: parsing "{args[3]}": '
                    "invalid syntax"
                ) from None
            if limit:
                substring["limit"] = limit
        handler["uri_substring"] = [substring]
    elif op == "path_regexp":
        if len(args) != 3:
            raise h.arg_err()
        handler["path_regexp"] = [{"find": args[1], "replace": args[2]}]
    elif op == "query":
        if len(args) > 4:
            raise h.arg_err()
        ops: JSONDict = {}
        has_args = len(args) > 1
        if has_args:
            _query_op(h, ops, args[1:])
        while h.next_block(0):
            if has_args:
                raise h.err("Cannot specify uri query rewrites in both argument and block")
            _query_op(h, ops, [h.val(), *h.remaining_args()])
        handler["query"] = ops
    else:
        raise h.err(f"unrecognized URI manipulation '{op}'")
    return handler


def parse_log_skip(h: Helper) -> JSONDict:
    h.next()
    if h.next_arg():
        raise h.arg_err()
    if h.next_block(0):
        raise h.err("log_skip directive does not accept blocks")
    if h.val() == "skip_log":
        h.warn("the 'skip_log' directive is deprecated, please use 'log_skip' instead!")
    return {"handler": "vars", "log_skip": True}


def parse_log_name(h: Helper) -> JSONDict:
    h.next()
    return {"handler": "vars", "access_logger_names": h.remaining_args()}


def register() -> None:
    register_directive("bind", parse_bind)
    register_directive("tls", parse_tls)
    register_directive("root", parse_root)
    register_handler_directive("vars", parse_vars)
    register_handler_directive("redir", parse_redir)
    register_handler_directive("respond", parse_respond)
    register_handler_directive("abort", parse_abort)
    register_handler_directive("error", parse_error)
    register_handler_directive("route", parse_route)
    register_handler_directive("handle", parse_handle)
    register_directive("handle_path", parse_handle_path)
    register_directive("handle_errors", parse_handle_errors)
    register_directive("log", parse_log)
    register_handler_directive("skip_log", parse_log_skip)
    register_handler_directive("log_skip", parse_log_skip)
    register_handler_directive("log_name", parse_log_name)
    register_directive("rewrite", parse_rewrite)
    register_handler_directive("method", parse_method)
    register_handler_directive("uri", parse_uri)


register()
