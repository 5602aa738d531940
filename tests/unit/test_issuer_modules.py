"""Issuer modules pyproxy cannot run are config errors naming the JSON path (pyproxy issue #12),
refused where the config is validated (`validate`, `run`, admin `/load`), not skipped at runtime;
`zerossl` (current Caddy's ZeroSSL API issuer) runs, with its fields checked strictly."""

from __future__ import annotations

from typing import Any

import pytest

from config.errors import ConfigError
from proxy.certs import check_issuer_modules, prepare_certificates
from proxy.supervisor import validate


def config_with_policies(tmp_path: Any, policies: list[dict[str, Any]]) -> dict[str, Any]:
    route = {
        "match": [{"host": ["a.example.com"]}],
        "handle": [{"handler": "static_response", "body": "hi"}],
    }
    return {
        "storage": {"module": "file_system", "root": str(tmp_path / "data")},
        "apps": {
            "http": {"servers": {"srv0": {"listen": [":8443"], "routes": [route]}}},
            "tls": {"automation": {"policies": policies}},
        },
    }


def test_zerossl_module_runs_and_requires_its_api_key() -> None:
    # Current Caddy's `zerossl` is ZeroSSL's own API; pyproxy runs it (acme_client.zerossl_api).
    policies: list[dict[str, Any]] = [
        {"issuers": [{"module": "internal"}]},
        {"issuers": [{"module": "acme"}, {"module": "zerossl", "api_key": "k"}]},
    ]
    check_issuer_modules({"automation": {"policies": policies}})
    for issuer in ({"module": "zerossl"}, {"module": "zerossl", "api_key": " "}):
        policies[1]["issuers"][1] = issuer
        with pytest.raises(ConfigError) as err:
            check_issuer_modules({"automation": {"policies": policies}})
        assert str(err.value) == (
            "apps.tls.automation.policies[1].issuers[1].api_key: the zerossl issuer requires the"
            " API key of a ZeroSSL account"
        )


def test_zerossl_fields_are_strict(tmp_path: Any) -> None:
    def zerossl(**fields: Any) -> dict[str, Any]:
        return config_with_policies(
            tmp_path, [{"issuers": [{"module": "zerossl", "api_key": "k", **fields}]}]
        )

    validate(zerossl(validity_days=90, alternate_http_port=8443, listen_host=""))
    cases = {
        # 2.6.2's zerossl was ACME: its ACME fields are unknown to current Caddy's module.
        "email": (
            "me@example.com",
            r'^apps\.tls\.automation\.policies\[0\]\.issuers\[0\]: json: unknown field "email"$',
        ),
        "cname_validation": (
            {"provider": {"name": "cloudflare"}},
            r"issuers\[0\]\.cname_validation: not supported by pyproxy: pyproxy has no DNS",
        ),
        "alternate_http_port": (
            8080,
            r"issuers\[0\]\.alternate_http_port: no server of this config listens on port 8080;"
            r".*remove alternate_http_port\)$",
        ),
        "listen_host": ("10.9.9.9", r"issuers\[0\]\.listen_host: no server of this config listens"),
        "validity_days": (-1, r"issuers\[0\]\.validity_days: must not be negative"),
    }
    for name, (value, message) in cases.items():
        config = zerossl(**{name: value})
        # A server on one address: listen_host must be it (as the ACME challenges' bind_host).
        config["apps"]["http"]["servers"]["srv0"]["listen"] = ["127.0.0.1:8443"]
        with pytest.raises(ConfigError, match=message):
            validate(config)


def test_misspelled_and_missing_modules_are_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^apps\.tls\.automation\.policies\[0\]\.issuers\[0\]"
        r"\.module: issuer module 'acmee' is not supported by pyproxy",
    ):
        check_issuer_modules({"automation": {"policies": [{"issuers": [{"module": "acmee"}]}]}})
    with pytest.raises(ConfigError, match=r"issuers\[0\]\.module: issuer module name is required"):
        check_issuer_modules({"automation": {"policies": [{"issuers": [{"ca": "x"}]}]}})


def test_supported_modules_pass(tmp_path: Any) -> None:
    # What the Caddyfile adapter writes with `email`: Let's Encrypt, then ZeroSSL as `acme`.
    issuers = [
        {"module": "acme", "email": "me@example.com"},
        {"module": "acme", "email": "me@example.com", "ca": "https://acme.zerossl.com/v2/DV90"},
    ]
    setup = prepare_certificates(config_with_policies(tmp_path, [{"issuers": issuers}]))
    assert [m.name for m in setup.plan.managed] == ["a.example.com"]
    validate(config_with_policies(tmp_path, [{"issuers": [{"module": "internal"}]}]))


def test_validate_refuses_an_unsupported_issuer(tmp_path: Any) -> None:
    # supervisor.validate is what `pyproxy validate`, `run` and the admin `/load` all call.
    config = config_with_policies(tmp_path, [{"issuers": [{"module": "vault"}]}])
    with pytest.raises(ConfigError, match=r"policies\[0\]\.issuers\[0\]\.module: .*'vault'"):
        validate(config)
    config = config_with_policies(tmp_path, [{"issuers": [{"module": "zerossl"}]}])
    with pytest.raises(ConfigError, match=r"policies\[0\]\.issuers\[0\]\.api_key: "):
        validate(config)
