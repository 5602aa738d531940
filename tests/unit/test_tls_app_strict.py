"""The strict tls app checker (config/tls_app_fields.py): unknown fields are Caddy's `json:
unknown field`, wrong types fail, fields pyproxy cannot honour are refused with the reason, and
the challenge ports must be pyproxy's own listeners. Each error names the JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clikit import run_pyproxy

from config.adapt import adapt_caddyfile
from config.errors import ConfigError
from config.tls_app_fields import check_tls_app
from proxy.certs import prepare_certificates

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "conformance" / "caddyfile_adapt"

POLICY = "apps.tls.automation.policies[0]"
ACME = f"{POLICY}.issuers[0]"


def with_tls(tls: dict[str, Any], listen: tuple[str, ...] = (":443",)) -> dict[str, Any]:
    return {"apps": {"tls": tls, "http": {"servers": {"srv0": {"listen": list(listen)}}}}}


def with_policy(**policy: Any) -> dict[str, Any]:
    return with_tls({"automation": {"policies": [policy]}})


def with_acme(listen: tuple[str, ...] = (":443",), **issuer: Any) -> dict[str, Any]:
    return with_tls(
        {"automation": {"policies": [{"issuers": [{"module": "acme", **issuer}]}]}}, listen
    )


def error_of(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        check_tls_app(config)
    return str(info.value)


UNKNOWN_FIELDS: list[tuple[dict[str, Any], str]] = [
    (with_tls({"automaton": {}}), 'apps.tls: json: unknown field "automaton"'),
    (
        with_tls({"certificates": {"load_file": []}}),
        "apps.tls.certificates.load_file: unknown module: tls.certificates.load_file",
    ),
    (
        with_tls({"certificates": {"load_files": [{"certificate": "a", "keyfile": "b"}]}}),
        'apps.tls.certificates.load_files[0]: json: unknown field "keyfile"',
    ),
    (
        with_tls({"certificates": {"load_pem": [{"cert": "x"}]}}),
        'apps.tls.certificates.load_pem[0]: json: unknown field "cert"',
    ),
    (
        with_tls({"automation": {"renewal_interval": "1h"}}),
        'apps.tls.automation: json: unknown field "renewal_interval"',
    ),
    (with_policy(subject=["a.com"]), f'{POLICY}: json: unknown field "subject"'),
    (with_acme(mail="me@x.org"), f'{ACME}: json: unknown field "mail"'),
    (
        with_acme(external_account={"key_id": "k", "hmac": "m"}),
        f'{ACME}.external_account: json: unknown field "hmac"',
    ),
    (
        with_acme(preferred_chains={"smalest": True}),
        f'{ACME}.preferred_chains: json: unknown field "smalest"',
    ),
    (
        with_acme(challenges={"http01": {}}),
        f'{ACME}.challenges: json: unknown field "http01"',
    ),
    (
        with_acme(challenges={"http": {"disable": True}}),
        f'{ACME}.challenges.http: json: unknown field "disable"',
    ),
    (
        with_acme(challenges={"tls-alpn": {"port": 1}}),
        f'{ACME}.challenges.tls-alpn: json: unknown field "port"',
    ),
    (
        with_policy(issuers=[{"module": "internal", "life_time": "1h"}]),
        f'{POLICY}.issuers[0]: json: unknown field "life_time"',
    ),
    (
        with_tls({"session_tickets": {"rotation": "1h"}}),
        'apps.tls.session_tickets: json: unknown field "rotation"',
    ),
    (
        with_tls({"session_tickets": {"key_source": {"provider": "standard", "x": 1}}}),
        'apps.tls.session_tickets.key_source: json: unknown field "x"',
    ),
    (with_tls({"cache": {"size": 5}}), 'apps.tls.cache: json: unknown field "size"'),
]


@pytest.mark.parametrize(("config", "message"), UNKNOWN_FIELDS)
def test_unknown_fields_are_named_with_their_json_path(
    config: dict[str, Any], message: str
) -> None:
    assert error_of(config) == message


WRONG_TYPES: list[tuple[dict[str, Any], str]] = [
    (with_tls([]), "apps.tls: expected an object, got array"),  # type: ignore[arg-type]
    (with_tls({"automation": []}), "apps.tls.automation: expected an object, got array"),
    (
        with_tls({"automation": {"policies": {}}}),
        "apps.tls.automation.policies: expected an array, got object",
    ),
    (with_policy(subjects="a.com"), f"{POLICY}.subjects: expected an array, got string"),
    (with_policy(subjects=["a.com", 5]), f"{POLICY}.subjects[1]: expected a string, got int"),
    (with_policy(key_type=256), f"{POLICY}.key_type: expected a string, got int"),
    (
        with_policy(renewal_window_ratio="1/3"),
        f"{POLICY}.renewal_window_ratio: expected a number, got string",
    ),
    (with_acme(email=["me@x.org"]), f"{ACME}.email: expected a string, got array"),
    (
        with_acme(challenges={"http": {"disabled": "yes"}}),
        f"{ACME}.challenges.http.disabled: expected true or false, got string",
    ),
    (
        with_acme(challenges={"http": {"alternate_port": "8080"}}),
        f"{ACME}.challenges.http.alternate_port: expected an integer, got string",
    ),
    (
        with_tls({"automation": {"renew_interval": "soon"}}),
        "apps.tls.automation.renew_interval: invalid duration 'soon': "
        'time: invalid duration "soon"',
    ),
    (
        with_tls({"certificates": {"automate": "a.com"}}),
        "apps.tls.certificates.automate: expected an array, got string",
    ),
    (
        with_tls({"session_tickets": {"max_keys": True}}),
        "apps.tls.session_tickets.max_keys: expected an integer, got boolean",
    ),
    (with_policy(issuers=["acme"]), f"{POLICY}.issuers[0]: expected an object, got string"),
]


@pytest.mark.parametrize(("config", "message"), WRONG_TYPES)
def test_wrong_types_are_refused(config: dict[str, Any], message: str) -> None:
    assert error_of(config) == message


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    (with_policy(on_demand=True), f"{POLICY}.on_demand", "on-demand TLS is not implemented"),
    (
        with_tls({"automation": {"on_demand": {"permission": {"module": "http"}}}}),
        "apps.tls.automation.on_demand",
        "on-demand TLS is not implemented",
    ),
    (
        with_acme(challenges={"dns": {"provider": {"name": "cloudflare"}}}),
        f"{ACME}.challenges.dns",
        "no DNS-01 challenge",
    ),
    (with_tls({"dns": {"name": "cloudflare"}}), "apps.tls.dns", "no DNS-01 challenge"),
    (with_tls({"resolvers": ["1.1.1.1"]}), "apps.tls.resolvers", "no DNS-01 challenge"),
    (with_policy(reuse_private_keys=True), f"{POLICY}.reuse_private_keys", "new private key"),
    (with_policy(must_staple=True), f"{POLICY}.must_staple", "Must-Staple"),
    (with_policy(get_certificate=[{"via": "tailscale"}]), f"{POLICY}.get_certificate", "managers"),
    (
        with_tls({"automation": {"ocsp_interval": "1h"}}),
        "apps.tls.automation.ocsp_interval",
        "does not staple OCSP",
    ),
    (
        with_tls({"automation": {"storage_clean_interval": "24h"}}),
        "apps.tls.automation.storage_clean_interval",
        "does not clean",
    ),
    (with_acme(acme_timeout="2m"), f"{ACME}.acme_timeout", "network timeout is fixed"),
    (with_acme(certificate_lifetime="48h"), f"{ACME}.certificate_lifetime", "lifetime"),
    (with_acme(test_ca="https://staging/dir"), f"{ACME}.test_ca", "test CA"),
    (
        with_policy(issuers=[{"module": "internal", "sign_with_root": True}]),
        f"{POLICY}.issuers[0].sign_with_root",
        "intermediate",
    ),
    (with_tls({"cache": {"capacity": 100}}), "apps.tls.cache.capacity", "cache capacity"),
    (
        with_tls({"certificates": {"load_folders": ["/certs"]}}),
        "apps.tls.certificates.load_folders",
        "use load_files",
    ),
    (
        with_tls({"encrypted_client_hello": {"configs": []}}),
        "apps.tls.encrypted_client_hello",
        "Encrypted Client Hello",
    ),
    (
        with_tls({"session_tickets": {"key_source": {"provider": "distributed"}}}),
        "apps.tls.session_tickets.key_source.provider",
        "only the standard provider",
    ),
    (
        with_tls({"session_tickets": {"max_keys": 4}}),
        "apps.tls.session_tickets.max_keys",
        "one session ticket key",
    ),
    (
        with_acme(trusted_roots_pem_files=["a.pem", "b.pem"]),
        f"{ACME}.trusted_roots_pem_files",
        "one root file",
    ),
    (with_policy(key_type="rsa8192"), f"{POLICY}.key_type", "unknown key type 'rsa8192'"),
    (with_policy(renewal_window_ratio=1.5), f"{POLICY}.renewal_window_ratio", "less than 1"),
]


@pytest.mark.parametrize(("config", "where", "reason"), REFUSED)
def test_fields_pyproxy_cannot_honour_are_refused_with_the_reason(
    config: dict[str, Any], where: str, reason: str
) -> None:
    message = error_of(config)
    assert message.startswith(f"{where}: "), message
    assert reason in message


@pytest.mark.parametrize(
    "config",
    [
        # A refused field at its Go zero value is what Caddy omits (`omitempty`): its default.
        with_policy(on_demand=False, must_staple=False, reuse_private_keys=False),
        with_tls({"cache": {"capacity": 0}}),
        with_acme(acme_timeout=0),
        with_tls({"session_tickets": {"max_keys": 1, "key_source": {"provider": "standard"}}}),
    ],
)
def test_a_refused_field_at_its_zero_value_is_accepted(config: dict[str, Any]) -> None:
    check_tls_app(config)


def test_a_full_tls_app_of_honoured_fields_passes() -> None:
    config = with_tls(
        {
            "certificates": {
                "automate": ["a.example.com"],
                "load_files": [{"certificate": "c.pem", "key": "k.pem", "format": "pem"}],
                "load_pem": [{"certificate": "-----", "key": "-----", "tags": ["t"]}],
            },
            "automation": {
                "policies": [
                    {
                        "@id": "main",
                        "subjects": ["a.example.com"],
                        "key_type": "p384",
                        "renewal_window_ratio": 0.5,
                        "disable_ocsp_stapling": True,
                        "issuers": [
                            {
                                "module": "acme",
                                "ca": "https://ca.test/dir",
                                "email": "me@x.org",
                                "profile": "shortlived",
                                "external_account": {"key_id": "k", "mac_key": "m"},
                                "trusted_roots_pem_files": ["root.pem"],
                                "preferred_chains": {"root_common_name": ["R"]},
                                "challenges": {
                                    "http": {"disabled": False, "alternate_port": 8080},
                                    "tls-alpn": {"disabled": True},
                                    "distributed": False,
                                    "bind_host": "127.0.0.1",
                                },
                            },
                            {"module": "internal", "ca": "local", "lifetime": "12h"},
                            # Another module: proxy.certs.check_issuer_modules refuses it.
                            {"module": "acmee", "anything": 1},
                        ],
                    }
                ],
                "renew_interval": "10m",
            },
            "session_tickets": {"rotation_interval": "6h", "disable_rotation": False},
            "disable_ocsp_stapling": True,
            "disable_storage_check": True,
            "disable_storage_clean": True,
        },
        listen=("127.0.0.1:8443", "127.0.0.1:8080"),
    )
    check_tls_app(config)


def test_null_is_an_unset_field() -> None:
    check_tls_app(with_tls({"automation": None, "cache": {"capacity": None}}))


# ---- the challenge listeners ----------------------------------------------------------------


def test_alternate_port_of_a_server_listener_is_accepted() -> None:
    check_tls_app(
        with_acme(("127.0.0.1:8443", ":8080"), challenges={"http": {"alternate_port": 8080}})
    )
    check_tls_app(with_acme((":8000-8090",), challenges={"tls-alpn": {"alternate_port": 8081}}))


def test_alternate_port_of_the_http_port_option_is_accepted() -> None:
    # Automatic HTTPS adds its redirect listener (which answers HTTP-01) on http_port: the
    # adapter writes alternate_port from the http_port global option.
    config = with_acme(challenges={"http": {"alternate_port": 5080}})
    config["apps"]["http"]["http_port"] = 5080
    check_tls_app(config)


def test_alternate_port_where_nothing_listens_is_an_error() -> None:
    message = error_of(with_acme((":443",), challenges={"http": {"alternate_port": 9999}}))
    assert message.startswith(f"{ACME}.challenges.http.alternate_port: ")
    assert "no server of this config listens on port 9999" in message
    assert "starts no solver" in message
    message = error_of(with_acme((":443",), challenges={"tls-alpn": {"alternate_port": 9443}}))
    assert message.startswith(f"{ACME}.challenges.tls-alpn.alternate_port: ")


def test_alternate_port_out_of_range_is_an_error() -> None:
    message = error_of(with_acme(challenges={"http": {"alternate_port": 70000}}))
    assert message == f"{ACME}.challenges.http.alternate_port: port 70000 is out of range"


def test_bind_host_must_be_a_listening_host() -> None:
    check_tls_app(with_acme(("127.0.0.2:443",), challenges={"bind_host": "127.0.0.2"}))
    check_tls_app(with_acme((":443",), challenges={"bind_host": "127.0.0.2"}))  # all interfaces
    message = error_of(with_acme(("127.0.0.1:443",), challenges={"bind_host": "127.0.0.2"}))
    assert message.startswith(f"{ACME}.challenges.bind_host: no server of this config listens")


# ---- wired into startup ---------------------------------------------------------------------


def test_prepare_certificates_refuses_a_bad_tls_app(tmp_path: Path) -> None:
    config = with_policy(subjects=["a.example.com"], on_demand=True)
    config["storage"] = {"module": "file_system", "root": str(tmp_path)}
    with pytest.raises(ConfigError) as info:
        prepare_certificates(config)
    assert str(info.value).startswith(f"{POLICY}.on_demand: not supported by pyproxy")
    del config["apps"]["tls"]["automation"]["policies"][0]["on_demand"]
    config["apps"]["tls"]["automation"]["policies"][0]["subjectz"] = []
    with pytest.raises(ConfigError, match='unknown field "subjectz"'):
        prepare_certificates(config)


# ---- what adapters write passes ---------------------------------------------------------------


def _corpus_cases() -> list[Path]:
    return sorted(CORPUS.glob("*.caddyfiletest")) if CORPUS.is_dir() else []


def _only_refused_by_name(config: dict[str, Any]) -> None:
    """The checker accepts the config, or refuses a feature by name: never a field or type
    that Caddy's own JSON has."""
    try:
        check_tls_app(config)
    except ConfigError as exc:
        assert "not supported by pyproxy" in str(exc), str(exc)


@pytest.mark.skipif(not _corpus_cases(), reason="../shared/conformance not present")
def test_caddys_adapt_vectors_pass_the_checker() -> None:
    checked = 0
    for path in _corpus_cases():
        _, _, expected = path.read_text(encoding="utf-8").partition("----------")
        expected = expected.strip()
        if not expected.startswith("{"):
            continue
        config = json.loads(expected)
        if "tls" in config.get("apps", {}):
            check_tls_app(config)  # Caddy 2.6.2's own JSON: nothing in it is refused
            checked += 1
    assert checked >= 5


@pytest.mark.skipif(not _corpus_cases(), reason="../shared/conformance not present")
def test_pyproxys_adapter_output_for_caddys_vectors_passes_the_checker() -> None:
    checked = 0
    for path in _corpus_cases():
        caddyfile, _, expected = path.read_text(encoding="utf-8").partition("----------")
        if not expected.strip().startswith("{"):
            continue
        try:
            config, _ = adapt_caddyfile(caddyfile, str(path))
        except ConfigError:
            continue  # the conformance test judges the adapter; this one judges the checker
        _only_refused_by_name(config)
        checked += "tls" in config.get("apps", {})
    assert checked >= 5


# (Caddyfile, "" when its tls app passes, else the JSON path the checker refuses)
ADAPTED_TLS_APPS: list[tuple[str, str]] = [
    ("{\n\temail me@x.org\n\thttp_port 8080\n\thttps_port 8443\n}\na.example.com {\n}\n", ""),
    ("{\n\tacme_ca https://ca.test/dir\n\tacme_ca_root /r.pem\n}\na.example.com {\n}\n", ""),
    ("{\n\tacme_eab {\n\t\tkey_id k\n\t\tmac_key m\n\t}\n}\na.example.com {\n}\n", ""),
    ("{\n\tlocal_certs\n}\na.example.com {\n}\n", ""),
    ("{\n\tkey_type p384\n\trenew_interval 10m\n}\na.example.com {\n}\n", ""),
    (
        "{\n\tocsp_stapling off\n\tstorage_clean_interval off\n\tstorage_check off\n}\n"
        "a.example.com {\n}\n",
        "",
    ),
    ("{\n\temail me@x.org\n\tdefault_bind 127.0.0.1\n}\na.example.com {\n}\n", ""),
    ("a.example.com {\n\tbind 127.0.0.1\n\ttls me@x.org\n}\n", ""),
    (
        "a.example.com {\n\ttls {\n\t\tissuer acme {\n\t\t\tdisable_http_challenge\n"
        "\t\t\tdisable_tlsalpn_challenge\n\t\t\tpreferred_chains smallest\n\t\t}\n\t}\n}\n",
        "",
    ),
    ("a.example.com {\n\ttls {\n\t\tissuer internal {\n\t\t\tlifetime 1h\n\t\t}\n\t}\n}\n", ""),
    ("a.example.com {\n\ttls {\n\t\tissuer acme {\n\t\t\tdistributed false\n\t\t}\n\t}\n}\n", ""),
    (
        "{\n\ton_demand_tls {\n\t\task http://localhost:9/ask\n\t}\n}\n"
        "https:// {\n\ttls {\n\t\ton_demand\n\t}\n}\n",
        "apps.tls.automation.on_demand",
    ),
    (
        "{\n\temail me@x.org\n\tcert_lifetime 48h\n}\na.example.com {\n}\n",
        f"{ACME}.certificate_lifetime",
    ),
    (
        "{\n\tocsp_interval 1h\n\temail me@x.org\n}\na.example.com {\n}\n",
        "apps.tls.automation.ocsp_interval",
    ),
]


@pytest.mark.parametrize(("caddyfile", "refused"), ADAPTED_TLS_APPS)
def test_pyproxys_adapter_output_passes_the_checker(caddyfile: str, refused: str) -> None:
    config, _ = adapt_caddyfile(caddyfile, "Caddyfile")
    assert "tls" in config["apps"], json.dumps(config)
    if not refused:
        check_tls_app(config)
        return
    message = error_of(config)
    assert message.startswith(f"{refused}: not supported by pyproxy: "), message


def test_pyproxy_validate_refuses_a_bad_tls_app(tmp_path: Path) -> None:
    config = with_acme(challenges={"http": {"alternate_port": 9999}})
    config["storage"] = {"module": "file_system", "root": str(tmp_path / "data")}
    path = tmp_path / "caddy.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    proc = run_pyproxy("validate", "--config", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{ACME}.challenges.http.alternate_port: no server of this config listens" in (
        proc.stderr
    )
