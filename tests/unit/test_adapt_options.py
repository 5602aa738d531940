"""Global options and the `servers` option (config/adapt/global_options.py, server_options.py)."""

from __future__ import annotations

from typing import Any

import pytest

from config.adapt import adapt_caddyfile
from config.errors import ConfigError

SECOND_NS = 1_000_000_000


def adapt(text: str) -> dict[str, Any]:
    config, _ = adapt_caddyfile(text, "Caddyfile")
    return config


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        adapt_caddyfile(text, "Caddyfile")
    return str(info.value)


def test_ports_and_durations_go_to_the_http_app() -> None:
    text = (
        "{\n\thttp_port 8080\n\thttps_port 8443\n\tgrace_period 10s\n\tshutdown_delay 1m\n}\n"
        "example.com {\n}\n"
    )
    app = adapt(text)["apps"]["http"]
    assert app["http_port"] == 8080
    assert app["https_port"] == 8443
    assert app["grace_period"] == 10 * SECOND_NS
    assert app["shutdown_delay"] == 60 * SECOND_NS
    # a site without a port now listens on the custom HTTPS port
    assert app["servers"]["srv0"]["listen"] == [":8443"]


def test_admin_off_and_persist_config() -> None:
    assert adapt("{\n\tadmin off\n}\n:80\n")["admin"] == {"disabled": True}
    config = adapt("{\n\tpersist_config off\n}\n:80\n")
    assert config["admin"] == {"config": {"persist": False}}
    admin = adapt("{\n\tadmin :2020 {\n\t\tenforce_origin\n\t}\n}\n:80\n")["admin"]
    assert admin == {"listen": ":2020", "enforce_origin": True}
    assert adapt("{\n\tadmin {\n\t\torigins a b\n\t}\n}\n:80\n")["admin"] == {
        "listen": "localhost:2019",
        "origins": ["a", "b"],
    }


def test_storage_file_system() -> None:
    assert adapt("{\n\tstorage file_system /data\n}\n:80\n")["storage"] == {
        "module": "file_system",
        "root": "/data",
    }
    block = "{\n\tstorage file_system {\n\t\troot /var/x\n\t}\n}\n:80\n"
    assert adapt(block)["storage"]["root"] == "/var/x"
    assert "not supported" in error("{\n\tstorage consul\n}\n:80\n")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("off", "disable"),
        ("disable_redirects", "disable_redirects"),
        ("disable_certs", "disable_certificates"),
        ("ignore_loaded_certs", "ignore_loaded_certificates"),
    ],
)
def test_auto_https_flags(value: str, key: str) -> None:
    srv = adapt(f"{{\n\tauto_https {value}\n}}\nexample.com\n")["apps"]["http"]["servers"]["srv0"]
    assert srv["automatic_https"] == {key: True}


def test_auto_https_rejects_unknown_value() -> None:
    assert "auto_https must be one of" in error("{\n\tauto_https maybe\n}\n:80\n")


def test_servers_option_sets_fields_and_name() -> None:
    text = (
        "{\n\tservers :443 {\n\t\tname main\n\t\ttimeouts {\n\t\t\tread_header 5s\n"
        "\t\t\tidle 2m\n\t\t}\n\t\ttrusted_proxies static 10.0.0.0/8 private_ranges\n"
        "\t\tclient_ip_headers X-Real-IP\n\t\tmax_header_size 32KiB\n\t\tprotocols h1 h2\n"
        "\t\tstrict_sni_host insecure_off\n\t}\n}\nexample.com {\n}\n:8080 {\n}\n"
    )
    srvs = adapt(text)["apps"]["http"]["servers"]
    assert set(srvs) == {"main", "srv1"}
    main = srvs["main"]
    assert main["read_header_timeout"] == 5 * SECOND_NS
    assert main["idle_timeout"] == 120 * SECOND_NS
    assert main["trusted_proxies"]["source"] == "static"
    assert main["trusted_proxies"]["ranges"][:2] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert main["client_ip_headers"] == ["X-Real-IP"]
    assert main["max_header_bytes"] == 32 * 1024
    assert main["protocols"] == ["h1", "h2"]
    assert main["strict_sni_host"] is False
    assert "idle_timeout" not in srvs["srv1"]


def test_servers_option_without_address_applies_to_all() -> None:
    text = "{\n\tservers {\n\t\tprotocols h1\n\t}\n}\n:80 {\n}\n:81 {\n}\n"
    srvs = adapt(text)["apps"]["http"]["servers"]
    assert all(s["protocols"] == ["h1"] for s in srvs.values())


def test_servers_option_errors() -> None:
    assert "unrecognized servers option 'srv0'" in error(
        "{\n\tservers {\n\t\tsrv0 {\n\t\t}\n\t}\n}\n:80\n"
    )
    assert "duplicate listener addresses: :80" in error(
        "{\n\tservers :80 {\n\t}\n\tservers :80 {\n\t}\n}\n:80\n"
    )
    assert "cannot set a name for a server without a listener address" in error(
        "{\n\tservers {\n\t\tname x\n\t}\n}\n:80\n"
    )


def test_global_log_option_configures_default_logger() -> None:
    text = "{\n\tlog {\n\t\toutput stderr\n\t\tformat console\n\t\tlevel WARN\n\t}\n}\n"
    logs = adapt(text)["logging"]["logs"]
    assert logs == {
        "default": {
            "writer": {"output": "stderr"},
            "encoder": {"format": "console"},
            "level": "WARN",
        }
    }


def test_debug_sets_default_log_level() -> None:
    assert adapt("{\n\tdebug\n}\n:80\n")["logging"]["logs"]["default"] == {"level": "DEBUG"}


def test_unknown_and_unsupported_options() -> None:
    assert error("{\n\tfrobnicate\n}\n") == "Caddyfile:2: unrecognized global option: frobnicate"
    assert "Caddyfile:2: global option 'acme_dns' is not supported" in error(
        "{\n\tacme_dns cloudflare x\n}\n"
    )


def test_order_option_errors() -> None:
    assert "nope is not a registered directive" in error("{\n\torder nope first\n}\n:80\n")
    assert "unknown positional 'around'" in error("{\n\torder respond around redir\n}\n:80\n")
