"""`pyproxy adapt`'s whole error line for a bad reverse_proxy upstream port, as current Caddy
prints it (cmd/main.go "adapting config using", httptype.go "parsing caddyfile tokens for",
reverseproxy/caddyfile.go "parsing upstream", ParseNetworkAddress "invalid start port").
Caddy 2.6.2 adapts `www:99999` without complaint; current Caddy refuses it at adapt time."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main


@pytest.mark.parametrize(
    ("upstream", "detail"),
    [
        ("www:99999", 'invalid start port: strconv.ParseUint: parsing "99999": value out of range'),
        (
            "www:80-70000",
            'invalid end port: strconv.ParseUint: parsing "70000": value out of range',
        ),
    ],
)
def test_out_of_range_upstream_port(
    upstream: str, detail: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(f"localhost:8080 {{\n\treverse_proxy {upstream}\n}}\n")
    assert main(["adapt", "--config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "Error: adapting config using caddyfile: parsing caddyfile tokens for 'reverse_proxy': "
        f"parsing upstream '{upstream}': {detail}, at {path}:2\n"
    )
