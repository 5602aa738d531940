"""`pyproxy validate` refuses an issuer module it cannot run, naming the JSON path (issue #12)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import PYPROXY, ROOT

WAIT_S = 30.0


def test_validate_exits_1_for_an_unsupported_issuer_module(tmp_path: Path) -> None:
    route = {
        "match": [{"host": ["a.example.com"]}],
        "handle": [{"handler": "static_response", "body": "hi"}],
    }
    config = {
        "admin": {"disabled": True},
        "storage": {"module": "file_system", "root": str(tmp_path / "data")},
        "apps": {
            "http": {"servers": {"srv0": {"listen": [":8443"], "routes": [route]}}},
            "tls": {
                "automation": {"policies": [{"issuers": [{"module": "acme"}, {"module": "acmee"}]}]}
            },
        },
    }
    path = tmp_path / "caddy.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYPROXY_NATIVE="0")
    done = subprocess.run(
        [*PYPROXY, "validate", "--config", str(path), "--adapter", "json"],
        env=env,
        capture_output=True,
        timeout=WAIT_S,
        cwd=tmp_path,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert (
        "Error: apps.tls.automation.policies[0].issuers[1].module: issuer module 'acmee'"
        " is not supported by pyproxy (supported: acme, zerossl, internal)" in stderr
    ), stderr
