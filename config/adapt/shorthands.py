"""Placeholder shorthands: `{host}` → `{http.request.host}`, `{header.X}` → ..., etc.

Caddy rewrites these in every directive token before directives are parsed
(httpcaddyfile/shorthands.go), so handlers only ever see full placeholder names.
"""

from __future__ import annotations

import re

from config.caddyfile.token import Token

_SIMPLE = {
    "{host}": "{http.request.host}",
    "{hostport}": "{http.request.hostport}",
    "{port}": "{http.request.port}",
    "{orig_method}": "{http.request.orig_method}",
    "{orig_uri}": "{http.request.orig_uri}",
    "{orig_path}": "{http.request.orig_uri.path}",
    "{orig_dir}": "{http.request.orig_uri.path.dir}",
    "{orig_file}": "{http.request.orig_uri.path.file}",
    "{orig_query}": "{http.request.orig_uri.query}",
    "{orig_?query}": "{http.request.orig_uri.prefixed_query}",
    "{method}": "{http.request.method}",
    "{uri}": "{http.request.uri}",
    "{%uri}": "{http.request.uri_escaped}",
    "{path}": "{http.request.uri.path}",
    "{%path}": "{http.request.uri.path_escaped}",
    "{dir}": "{http.request.uri.path.dir}",
    "{file}": "{http.request.uri.path.file}",
    "{query}": "{http.request.uri.query}",
    "{%query}": "{http.request.uri.query_escaped}",
    "{?query}": "{http.request.uri.prefixed_query}",
    "{remote}": "{http.request.remote}",
    "{remote_host}": "{http.request.remote.host}",
    "{remote_port}": "{http.request.remote.port}",
    "{scheme}": "{http.request.scheme}",
    "{uuid}": "{http.request.uuid}",
    "{tls_cipher}": "{http.request.tls.cipher_suite}",
    "{tls_version}": "{http.request.tls.version}",
    "{tls_client_fingerprint}": "{http.request.tls.client.fingerprint}",
    "{tls_client_issuer}": "{http.request.tls.client.issuer}",
    "{tls_client_serial}": "{http.request.tls.client.serial}",
    "{tls_client_subject}": "{http.request.tls.client.subject}",
    "{tls_client_certificate_pem}": "{http.request.tls.client.certificate_pem}",
    "{tls_client_certificate_der_base64}": "{http.request.tls.client.certificate_der_base64}",
    "{upstream_hostport}": "{http.reverse_proxy.upstream.hostport}",
    "{client_ip}": "{http.vars.client_ip}",
}
# Go's strings.Replacer: at each position the first listed old string that matches wins
# (the list has no shared prefixes that matter), scanning left to right without rescans.
_SIMPLE_RE = re.compile("|".join(re.escape(k) for k in _SIMPLE))

_COMPLEX = [
    (re.compile(r"{header\.([\w-]*)}", re.ASCII), r"{http.request.header.\1}"),
    (re.compile(r"{cookie\.([\w-]*)}", re.ASCII), r"{http.request.cookie.\1}"),
    (re.compile(r"{labels\.([\w-]*)}", re.ASCII), r"{http.request.host.labels.\1}"),
    (re.compile(r"{path\.([\w-]*)}", re.ASCII), r"{http.request.uri.path.\1}"),
    (re.compile(r"{file\.([\w-]*)}", re.ASCII), r"{http.request.uri.path.file.\1}"),
    (re.compile(r"{query\.([\w-]*)}", re.ASCII), r"{http.request.uri.query.\1}"),
    (re.compile(r"{re\.([\w\-.]*)}", re.ASCII), r"{http.regexp.\1}"),
    (re.compile(r"{vars\.([\w-]*)}", re.ASCII), r"{http.vars.\1}"),
    (re.compile(r"{rp\.([\w\-.]*)}", re.ASCII), r"{http.reverse_proxy.\1}"),
    (re.compile(r"{resp\.([\w\-.]*)}", re.ASCII), r"{http.intercept.\1}"),
    (re.compile(r"{err\.([\w\-.]*)}", re.ASCII), r"{http.error.\1}"),
    (re.compile(r"{file_match\.([\w-]*)}", re.ASCII), r"{http.matchers.file.\1}"),
]


def expand_text(text: str) -> str:
    if "{" not in text:
        return text
    text = _SIMPLE_RE.sub(lambda m: _SIMPLE[m.group(0)], text)
    for pattern, replacement in _COMPLEX:
        text = pattern.sub(replacement, text)
    return text


def expand_segment(segment: list[Token]) -> None:
    """Rewrite shorthands in place in every token of a directive segment."""
    for tok in segment:
        tok.text = expand_text(tok.text)
