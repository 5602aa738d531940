"""Issuer modules pyproxy cannot run are config errors naming the JSON path (pyproxy issue #12),
refused where the config is validated (`validate`, `run`, admin `/load`), not skipped at runtime."""

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


def test_zerossl_module_is_refused_with_its_path_and_the_acme_form() -> None:
    tls_app = {
        "automation": {
            "policies": [
                {"issuers": [{"module": "internal"}]},
                {"issuers": [{"module": "acme"}, {"module": "zerossl", "api_key": "k"}]},
            ]
        }
    }
    with pytest.raises(ConfigError) as err:
        check_issuer_modules(tls_app)
    text = str(err.value)
    assert text.startswith(
        "apps.tls.automation.policies[1].issuers[1].module: issuer module 'zerossl' is not"
        " supported by pyproxy (supported: acme, internal)"
    ), text
    assert '"module": "acme", "ca": "https://acme.zerossl.com/v2/DV90"' in text


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
    config = config_with_policies(tmp_path, [{"issuers": [{"module": "zerossl"}]}])
    with pytest.raises(ConfigError, match=r"policies\[0\]\.issuers\[0\]\.module: .*'zerossl'"):
        validate(config)
