"""Site address parsing, listener addresses and specificity (config/adapt/addresses.py)."""

from __future__ import annotations

import pytest

from config.adapt.addresses import (
    AddressError,
    listeners_use_any_port_other_than,
    parse_address,
    parse_network_address,
    specificity,
    split_host_port,
    split_network_address,
)


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "path"),
    [
        ("example.com", "", "example.com", "", ""),
        ("example.com:8080", "", "example.com", "8080", ""),
        ("https://example.com", "https", "example.com", "", ""),
        ("http://example.com:81/foo/bar", "http", "example.com", "81", "/foo/bar"),
        (":443", "", "", "443", ""),
        ("[::1]:2015", "", "::1", "2015", ""),
        ("[::1]", "", "::1", "", ""),
        ("*.example.com", "", "*.example.com", "", ""),
        ("https://", "https", "", "", ""),
        ("localhost/", "", "localhost", "", "/"),
    ],
)
def test_parse_address_components(text: str, scheme: str, host: str, port: str, path: str) -> None:
    addr = parse_address(text)
    assert (addr.scheme, addr.host, addr.port, addr.path) == (scheme, host, port, path)
    assert addr.original == text


@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_parse_address_rejects_out_of_range_port(port: str) -> None:
    with pytest.raises(AddressError, match=f"port {port} is out of range"):
        parse_address(f"example.com:{port}")


def test_parse_address_rejects_non_numeric_port() -> None:
    with pytest.raises(AddressError, match="invalid port 'abc'"):
        parse_address("example.com:abc")


def test_normalize_lowercases_host_but_not_placeholders() -> None:
    addr = parse_address("HTTPS://Example.COM:8443").normalize()
    assert addr.scheme == "https"
    assert addr.host == "example.com"
    assert parse_address("{Env.HOST}.Example.com").normalize().host == "{Env.HOST}.example.com"


def test_normalize_canonicalises_ipv6() -> None:
    assert parse_address("[0:0:0:0:0:0:0:1]:80").normalize().host == "::1"


def test_address_string_omits_default_ports() -> None:
    assert str(parse_address("example.com:443")) == "https://example.com"
    assert str(parse_address("example.com:80")) == "http://example.com"
    assert str(parse_address("http://example.com:8080/x")) == "http://example.com:8080/x"
    assert str(parse_address(":443")) == "https://"


def test_split_host_port_matches_go_errors() -> None:
    assert split_host_port("[::1]:80") == ("::1", "80")
    assert split_host_port(":80") == ("", "80")
    with pytest.raises(AddressError, match="missing port"):
        split_host_port("example.com")
    with pytest.raises(AddressError, match="too many colons"):
        split_host_port("::1")


def test_network_addresses() -> None:
    assert split_network_address("tcp6/[::]") == ("tcp6", "::", "")
    assert split_network_address("unix//run/x.sock") == ("unix", "/run/x.sock", "")
    assert str(parse_network_address(":443")) == ":443"
    assert str(parse_network_address("tcp6/[::]:443")) == "tcp6/[::]:443"
    assert str(parse_network_address("127.0.0.1:8000-8003")) == "127.0.0.1:8000-8003"
    with pytest.raises(AddressError, match="end port must not be less than start port"):
        parse_network_address(":90-80")


def test_listeners_use_any_port_other_than() -> None:
    assert not listeners_use_any_port_other_than([":80"], "80")
    assert listeners_use_any_port_other_than([":80", ":443"], "80")
    assert not listeners_use_any_port_other_than(["127.0.0.1:79-81"], "80")


def test_specificity_discounts_wildcards_and_placeholders() -> None:
    assert specificity("example.com") == len("example.com")
    assert specificity("*.example.com") == len(".example.com")
    assert specificity("{host}.example.com") == len(".example.com")
    assert specificity("") == 0
