"""The `tls` directive, automation policies and connection policies (config/adapt/tls_app.py)."""

from __future__ import annotations

from typing import Any

import pytest

from config.adapt import adapt_caddyfile
from config.adapt.tls_app import (
    ZEROSSL_PRODUCTION_CA,
    AutomationPolicy,
    consolidate_automation_policies,
)
from config.errors import ConfigError
from config.subjects import match_wildcard, subject_is_internal


def adapt(text: str) -> dict[str, Any]:
    config, _ = adapt_caddyfile(text, "Caddyfile")
    return config


def policies(text: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = adapt(text)["apps"]["tls"]["automation"]["policies"]
    return result


def test_default_issuers_need_no_tls_app() -> None:
    assert "tls" not in adapt("a.example.com {\n}\nb.example.com {\n}\n")["apps"]


def test_tls_internal_makes_an_internal_policy() -> None:
    assert policies("example.com {\n\ttls internal\n}\n") == [
        {"subjects": ["example.com"], "issuers": [{"module": "internal"}]}
    ]


def test_tls_email_uses_lets_encrypt_and_zerossl() -> None:
    (policy,) = policies("example.com {\n\ttls me@example.com\n}\n")
    assert policy["issuers"] == [
        {"module": "acme", "email": "me@example.com"},
        {"module": "acme", "email": "me@example.com", "ca": ZEROSSL_PRODUCTION_CA},
    ]


def test_global_email_fills_a_catch_all_policy() -> None:
    (policy,) = policies("{\n\temail ops@example.com\n}\nexample.com {\n}\n:8443 {\n}\n")
    assert "subjects" not in policy
    assert policy["issuers"][0] == {"module": "acme", "email": "ops@example.com"}


def test_local_certs_with_site_override() -> None:
    text = "{\n\tlocal_certs\n}\na.example.com {\n}\nb.example.com {\n\ttls x@y.z\n}\n"
    result = policies(text)
    assert result[0]["subjects"] == ["b.example.com"]
    assert result[-1] == {"issuers": [{"module": "internal"}]}


def test_public_and_internal_names_get_separate_policies() -> None:
    text = "{\n\tkey_type p256\n}\nexample.com, localhost {\n}\n"
    result = policies(text)
    internal = [p for p in result if p.get("issuers") == [{"module": "internal"}]]
    assert internal and internal[0]["subjects"] == ["localhost"]


def test_certificate_files_are_loaded_and_selected_by_tag() -> None:
    config = adapt("a.com {\n\ttls a.pem a.key\n}\nb.com {\n\ttls b.pem b.key\n}\n")
    loads = config["apps"]["tls"]["certificates"]["load_files"]
    assert [(f["certificate"], f["tags"]) for f in loads] == [
        ("a.pem", ["cert0"]),
        ("b.pem", ["cert1"]),
    ]
    cps = config["apps"]["http"]["servers"]["srv0"]["tls_connection_policies"]
    assert cps[0] == {"match": {"sni": ["a.com"]}, "certificate_selection": {"any_tag": ["cert0"]}}
    assert cps[1]["certificate_selection"] == {"any_tag": ["cert1"]}
    assert cps[-1] == {}  # catch-all policy last


def test_identical_connection_policies_are_merged() -> None:
    block = "{\n\ttls {\n\t\tprotocols tls1.3\n\t}\n}\n"
    cps = adapt("a.com " + block + "b.com " + block)["apps"]["http"]["servers"]["srv0"][
        "tls_connection_policies"
    ]
    assert cps[0] == {"match": {"sni": ["a.com", "b.com"]}, "protocol_min": "tls1.3"}


def test_issuer_block_and_preferred_chains() -> None:
    text = (
        "example.com {\n\ttls {\n\t\tissuer acme {\n\t\t\tdir https://ca.test/dir\n"
        "\t\t\tpreferred_chains smallest\n\t\t}\n\t}\n}\n"
    )
    (policy,) = policies(text)
    assert policy["issuers"] == [
        {"module": "acme", "ca": "https://ca.test/dir", "preferred_chains": {"smallest": True}}
    ]


def test_http_port_option_sets_acme_alternate_port() -> None:
    text = "{\n\thttp_port 8080\n}\nexample.com {\n\ttls me@x.org\n}\n"
    issuer = policies(text)[0]["issuers"][0]
    assert issuer["challenges"]["http"] == {"alternate_port": 8080}


def test_on_demand_tls_option() -> None:
    text = (
        "{\n\ton_demand_tls {\n\t\task http://localhost:9/ask\n\t}\n}\n"
        "https:// {\n\ttls {\n\t\ton_demand\n\t}\n}\n"
    )
    automation = adapt(text)["apps"]["tls"]["automation"]
    assert automation["on_demand"]["permission"] == {
        "module": "http",
        "endpoint": "http://localhost:9/ask",
    }
    assert automation["policies"] == [{"on_demand": True}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("tls foo", "single argument must either be 'internal'"),
        ("tls {\n\t\tbogus\n\t}", "unknown subdirective: bogus"),
        ("tls {\n\t\tprotocols tls1.0\n\t}", "wrong protocol name"),
        ("tls internal {\n\t\tca_root x.pem\n\t}", "cannot create both ACME and internal"),
        ("tls {\n\t\tclient_auth {\n\t\t}\n\t}", "'client_auth' is not supported by pyproxy"),
    ],
)
def test_tls_directive_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        adapt(f"example.com {{\n\t{body}\n}}\n")


def test_match_wildcard() -> None:
    assert match_wildcard("sub.example.com", "*.example.com")
    assert not match_wildcard("a.sub.example.com", "*.example.com")
    assert match_wildcard("example.com", "example.com")


def test_subject_is_internal() -> None:
    assert subject_is_internal("localhost")
    assert subject_is_internal("app.internal")
    assert not subject_is_internal("example.com")


def test_empty_policies_shadowed_by_a_wildcard_are_dropped() -> None:
    aps = [
        AutomationPolicy(subjects=["a.example.com"]),
        AutomationPolicy(subjects=["*.example.com"]),
    ]
    assert consolidate_automation_policies(aps) == []


def test_policy_kept_when_it_shields_from_a_wildcard_with_issuers() -> None:
    internal = [{"module": "internal"}]
    aps = [
        AutomationPolicy(subjects=["*.example.com"], issuers=internal, issuers_raw=internal),
        AutomationPolicy(subjects=["a.example.com"]),
    ]
    result = consolidate_automation_policies(aps)
    assert [p.subjects for p in result] == [["a.example.com"], ["*.example.com"]]
