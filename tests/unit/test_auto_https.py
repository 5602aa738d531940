"""Automatic HTTPS planning (config/auto_https.py) on configs produced by the Caddyfile adapter."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from config.adapt import adapt_caddyfile
from config.auto_https import (
    REDIRECT_SERVER_NAME,
    AutoHTTPSPlan,
    plan_automatic_https,
    redirect_location,
)
from config.errors import ConfigError
from config.model import load_model
from config.subjects import (
    match_wildcard,
    subject_is_internal,
    subject_qualifies_for_cert,
    subject_qualifies_for_public_cert,
)

SEED = """\
v3a.ocaml.org, v3b.ocaml.org, v3.ocaml.org, ocaml.org, www.ocaml.org {
\treverse_proxy www:8080
}
"""
SEED_NAMES = ("ocaml.org", "v3.ocaml.org", "v3a.ocaml.org", "v3b.ocaml.org", "www.ocaml.org")
PLAIN = "https://{pyproxy.request.url_host}{http.request.uri}"


def adapt(text: str) -> dict[str, Any]:
    config, _ = adapt_caddyfile(text, "Caddyfile")
    return config


def plan_for(text: str, **kwargs: Any) -> AutoHTTPSPlan:
    return plan_automatic_https(adapt(text), **kwargs)


def servers(plan: AutoHTTPSPlan) -> dict[str, Any]:
    result: dict[str, Any] = plan.config["apps"]["http"]["servers"]
    return result


def redirect_summary(routes: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], str]]:
    """(hosts, Location) for each redirect route, in order; () hosts = catch-all."""
    out = []
    for route in routes:
        handler = route["handle"][0]
        if handler.get("status_code") != 308:
            continue
        assert route["match"][0]["protocol"] == "http"
        assert handler["close"] is True
        hosts = tuple(route["match"][0].get("host", ()))
        out.append((hosts, handler["headers"]["Location"][0]))
    return out


# ---- the seed deployment ----------------------------------------------------------------------


def test_seed_names_all_get_acme_certificates() -> None:
    plan = plan_for(SEED)
    assert plan.managed_names == SEED_NAMES
    assert plan.acme_names == SEED_NAMES
    assert plan.internal_names == ()
    assert plan.acme_challenge_hosts == SEED_NAMES
    assert all(m.issuers == ({"module": "acme"},) for m in plan.managed)
    assert plan.https_servers == ("srv0",)
    assert servers(plan)["srv0"]["tls_connection_policies"] == [{}]


def test_seed_redirects_on_port_80_with_catch_all() -> None:
    plan = plan_for(SEED)
    redirect = servers(plan)[REDIRECT_SERVER_NAME]
    assert redirect["listen"] == [":80"]
    assert redirect_summary(redirect["routes"]) == [(SEED_NAMES, PLAIN), ((), PLAIN)]
    assert [(r.address, r.server) for r in plan.redirects] == [(":80", REDIRECT_SERVER_NAME)]
    # the redirect server is plain HTTP: it gets no TLS policy and is not an HTTPS server
    assert "tls_connection_policies" not in redirect


def test_adjusted_config_loads_into_the_model() -> None:
    model = load_model(plan_for(SEED).config)
    assert model is not None


def test_input_config_is_not_mutated() -> None:
    config = adapt(SEED)
    before = copy.deepcopy(config)
    plan_automatic_https(config)
    assert config == before


# ---- local CA names ---------------------------------------------------------------------------


def test_localhost_goes_to_the_local_ca() -> None:
    plan = plan_for("localhost {\n\trespond hi\n}\n")
    assert plan.internal_names == ("localhost",)
    assert plan.acme_challenge_hosts == ()
    assert plan.managed[0].issuers == ({"module": "internal"},)
    assert redirect_summary(servers(plan)[REDIRECT_SERVER_NAME]["routes"])[0] == (
        ("localhost",),
        PLAIN,
    )


@pytest.mark.parametrize(
    "name",
    ["app.localhost", "printer.local", "db.internal", "nas.home.arpa", "10.0.0.1", "127.0.0.1"],
)
def test_internal_names_use_the_local_ca(name: str) -> None:
    plan = plan_for(f"{name} {{\n\trespond hi\n}}\n")
    managed = plan.managed_name(name)
    assert managed is not None and managed.internal


def test_public_ip_uses_local_ca_without_policies_but_acme_with_a_catch_all() -> None:
    assert plan_for("8.8.8.8 {\n\trespond hi\n}\n").internal_names == ("8.8.8.8",)
    config = adapt("8.8.8.8 {\n\trespond hi\n}\n")
    config["apps"]["tls"] = {
        "automation": {"policies": [{"issuers": [{"module": "acme", "ca": "https://ca/dir"}]}]}
    }
    plan = plan_automatic_https(config)
    assert plan.acme_names == ("8.8.8.8",)
    assert plan.managed[0].issuers == ({"module": "acme", "ca": "https://ca/dir"},)
    assert plan.managed[0].policy_index == 0


def test_tls_internal_and_local_certs_make_public_names_internal() -> None:
    plan = plan_for(
        "example.com {\n\ttls internal\n\trespond x\n}\nexample.org {\n\trespond y\n}\n"
    )
    assert plan.internal_names == ("example.com",)
    assert plan.acme_names == ("example.org",)
    plan = plan_for("{\n\tlocal_certs\n}\nexample.com, example.org {\n\trespond x\n}\n")
    assert plan.internal_names == ("example.com", "example.org")
    assert plan.acme_names == ()


def test_global_email_reaches_the_acme_issuers() -> None:
    plan = plan_for("{\n\temail ops@ocaml.org\n}\nexample.com, localhost {\n\trespond x\n}\n")
    managed = plan.managed_name("example.com")
    assert managed is not None and not managed.internal
    assert all(i.get("email") == "ops@ocaml.org" for i in managed.issuers)
    assert len(managed.issuers) == 2  # Let's Encrypt, then ZeroSSL
    assert plan.internal_names == ("localhost",)


def test_policy_without_issuers_for_internal_subjects_uses_local_ca() -> None:
    config = adapt("foo.localhost {\n\trespond hi\n}\n")
    config["apps"]["tls"] = {"automation": {"policies": [{"subjects": ["foo.localhost"]}]}}
    managed = plan_automatic_https(config).managed_name("foo.localhost")
    assert managed is not None
    assert managed.issuers == ({"module": "internal"},) and managed.policy_index == 0


# ---- bind, ports, http:// sites ---------------------------------------------------------------


def test_bind_several_addresses_redirects_on_every_one() -> None:
    plan = plan_for("example.com {\n\tbind 127.0.0.1 ::1 192.0.2.7\n\trespond hi\n}\n")
    redirect = servers(plan)[REDIRECT_SERVER_NAME]
    assert redirect["listen"] == ["127.0.0.1:80", "192.0.2.7:80", "[::1]:80"]
    summary = redirect_summary(redirect["routes"])
    assert summary == [(("example.com",), PLAIN)] * 3 + [((), PLAIN)]


def test_http_only_site_is_not_https() -> None:
    plan = plan_for("http://example.com {\n\trespond hi\n}\n")
    assert plan.managed == () and plan.redirects == () and plan.https_servers == ()
    assert REDIRECT_SERVER_NAME not in servers(plan)


def test_redirects_join_an_existing_http_server_after_its_host_routes() -> None:
    plan = plan_for(
        "http://plain.example {\n\trespond plain\n}\nsecure.example {\n\trespond secure\n}\n"
    )
    assert REDIRECT_SERVER_NAME not in servers(plan)
    http_srv = next(s for s in servers(plan).values() if s["listen"] == [":80"])
    routes = http_srv["routes"]
    assert routes[0]["match"][0]["host"] == ["plain.example"]  # the user's site stays first
    assert redirect_summary(routes) == [(("secure.example",), PLAIN), ((), PLAIN)]
    assert plan.managed_names == ("secure.example",)
    assert [r.server for r in plan.redirects] == ["srv1"]


def test_non_default_https_port_redirect_omits_port_like_caddy() -> None:
    # https_port names the port behind a port forward; Caddy never puts it in Location.
    plan = plan_for("{\n\thttp_port 8080\n\thttps_port 8443\n}\nexample.com {\n\trespond x\n}\n")
    redirect = servers(plan)[REDIRECT_SERVER_NAME]
    assert redirect["listen"] == [":8080"]
    assert redirect_summary(redirect["routes"]) == [(("example.com",), PLAIN), ((), PLAIN)]
    assert servers(plan)["srv0"]["listen"] == [":8443"]


def test_site_port_other_than_https_port_is_kept_in_location() -> None:
    plan = plan_for("example.com:9443 {\n\trespond x\n}\n")
    redirect = servers(plan)[REDIRECT_SERVER_NAME]
    assert redirect_summary(redirect["routes"]) == [
        (("example.com",), "https://{pyproxy.request.url_host}:9443{http.request.uri}"),
        ((), PLAIN),
    ]
    # :9443 is not the HTTPS port, so TLS comes from the qualifying name, not the port
    assert servers(plan)["srv0"]["tls_connection_policies"] == [{}]


def test_redirect_location_rule() -> None:
    assert redirect_location(443, 80, 443) == PLAIN
    assert (
        redirect_location(8443, 80, 443)
        == "https://{pyproxy.request.url_host}:8443{http.request.uri}"
    )
    assert redirect_location(8443, 8080, 8443) == PLAIN
    assert redirect_location(80, 8080, 8443) == PLAIN


def test_catch_all_https_site_redirects_everything() -> None:
    plan = plan_for(":443 {\n\trespond hi\n}\n")
    assert plan.managed == ()
    assert plan.https_servers == ("srv0",)
    redirect = servers(plan)[REDIRECT_SERVER_NAME]
    assert redirect_summary(redirect["routes"]) == [((), PLAIN), ((), PLAIN)]


def test_server_on_other_port_without_names_is_left_alone() -> None:
    plan = plan_for(":9000 {\n\trespond hi\n}\n")
    assert plan.https_servers == () and plan.redirects == ()


def test_exact_names_redirect_before_wildcards() -> None:
    plan = plan_for("*.example.com {\n\trespond a\n}\nexample.com:8443 {\n\trespond b\n}\n")
    redirect = servers(plan)[REDIRECT_SERVER_NAME]
    hosts = [h for h, _ in redirect_summary(redirect["routes"])]
    assert hosts == [("example.com",), ("*.example.com",), ()]


# ---- auto_https options -----------------------------------------------------------------------


def test_auto_https_off_disables_everything_but_keeps_tls() -> None:
    plan = plan_for("{\n\tauto_https off\n}\nexample.com {\n\trespond x\n}\n")
    assert plan.managed == () and plan.redirects == ()
    assert plan.https_servers == ("srv0",)  # the adapter keeps an explicit TLS policy


def test_disable_redirects_keeps_certificates() -> None:
    plan = plan_for("{\n\tauto_https disable_redirects\n}\nexample.com {\n\trespond x\n}\n")
    assert plan.managed_names == ("example.com",)
    assert plan.redirects == ()
    assert REDIRECT_SERVER_NAME not in servers(plan)


def test_disable_certs_keeps_redirects() -> None:
    plan = plan_for("{\n\tauto_https disable_certs\n}\nexample.com {\n\trespond x\n}\n")
    assert plan.managed == ()
    assert redirect_summary(servers(plan)[REDIRECT_SERVER_NAME]["routes"])[0][0] == ("example.com",)
    assert servers(plan)["srv0"]["tls_connection_policies"] == [{}]


def test_loaded_certificates_suppress_management_unless_ignored() -> None:
    text = "a.example.com, b.example.com, other.org {\n\trespond x\n}\n"
    plan = plan_for(text, loaded_names=["*.example.com"])
    assert plan.managed_names == ("other.org",)
    assert plan.skipped_loaded == ("a.example.com", "b.example.com")
    plan = plan_for(
        "{\n\tauto_https ignore_loaded_certs\n}\n" + text, loaded_names=["*.example.com"]
    )
    assert plan.managed_names == ("a.example.com", "b.example.com", "other.org")


def test_skip_and_skip_certificates() -> None:
    config = adapt("a.example.com, b.example.com, c.example.com {\n\trespond x\n}\n")
    config["apps"]["http"]["servers"]["srv0"]["automatic_https"] = {
        "skip": ["a.example.com"],
        "skip_certificates": ["b.example.com"],
    }
    plan = plan_automatic_https(config)
    assert plan.managed_names == ("c.example.com",)
    summary = redirect_summary(
        plan.config["apps"]["http"]["servers"][REDIRECT_SERVER_NAME]["routes"]
    )
    assert summary[0][0] == ("b.example.com", "c.example.com")


def test_wildcards_and_unqualified_names() -> None:
    config = adapt("*.example.com, example.com {\n\trespond x\n}\n")
    # a name with a wildcard in the middle never qualifies; a placeholder neither
    config["apps"]["http"]["servers"]["srv0"]["routes"][0]["match"][0]["host"] += [
        "a.*.example.com",
        "{http.request.host}",
    ]
    plan = plan_automatic_https(config)
    assert plan.managed_names == ("*.example.com", "example.com")
    assert plan.acme_challenge_hosts == ("example.com",)


def test_second_level_wildcard_warns() -> None:
    plan = plan_for("*.com {\n\trespond x\n}\n")
    assert any("second-level wildcard" in w for w in plan.warnings)


def test_env_placeholders_in_hosts_are_resolved() -> None:
    config = adapt("example.com {\n\trespond x\n}\n")
    config["apps"]["http"]["servers"]["srv0"]["routes"][0]["match"][0]["host"] = ["{env.SITE}"]
    plan = plan_automatic_https(config, env={"SITE": "site.example"})
    assert plan.managed_names == ("site.example",)


def test_tls_automate_names_are_managed() -> None:
    config = adapt("http://example.com {\n\trespond x\n}\n")
    config["apps"]["tls"] = {"certificates": {"automate": ["extra.example"]}}
    assert plan_automatic_https(config).managed_names == ("extra.example",)


def test_ambiguous_ipv6_listener_is_an_error() -> None:
    config = adapt("example.com {\n\trespond x\n}\n")
    config["apps"]["http"]["servers"]["srv0"]["listen"] = [":443", "::1:443"]
    with pytest.raises(ConfigError, match="wrap the IPv6 address"):
        plan_automatic_https(config)


# ---- subject rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cert", "public", "internal"),
    [
        ("example.com", True, True, False),
        ("*.example.com", True, True, False),
        ("*.com", True, False, False),
        ("a.*.example.com", False, False, False),
        (".example.com", False, False, False),
        ("localhost", True, False, True),
        ("x.home.arpa", True, False, True),
        ("192.168.1.1", True, False, True),
        ("::1", True, False, True),
        ("8.8.8.8", True, True, False),
        ("", False, False, False),
        ("{host}", False, False, False),
    ],
)
def test_subject_rules(name: str, cert: bool, public: bool, internal: bool) -> None:
    assert subject_qualifies_for_cert(name) is cert
    assert subject_qualifies_for_public_cert(name) is public
    assert subject_is_internal(name) is internal


def test_match_wildcard() -> None:
    assert match_wildcard("a.example.com", "*.example.com")
    assert match_wildcard("A.Example.COM", "*.example.com")
    assert not match_wildcard("a.b.example.com", "*.example.com")
    assert not match_wildcard("example.com", "*.example.com")


def test_bind_addresses_share_a_wildcard_http_server() -> None:
    # Linux cannot bind 127.0.0.1:80 beside :80, so the `http://` server on :80 takes the
    # redirects for both bind addresses (as Caddy's hasListenerAddress decides), once each.
    plan = plan_for(
        "example.com {\n\tbind 127.0.0.1 ::1\n\trespond hi\n}\n"
        "http://plain.example {\n\trespond plain\n}\n"
    )
    assert REDIRECT_SERVER_NAME not in servers(plan)
    assert [(r.address, r.server) for r in plan.redirects] == [
        ("127.0.0.1:80", "srv1"),
        ("[::1]:80", "srv1"),
    ]
    summary = redirect_summary(servers(plan)["srv1"]["routes"])
    assert summary == [(("example.com",), PLAIN), ((), PLAIN)]
