"""The autosave of configs pushed through the admin API: Caddy's AppConfigDir and
`autosave.json`, honouring `admin.config.persist`."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.admin.config_paths import go_json

log = logging.getLogger("pyproxy.admin")


def app_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Caddy's AppConfigDir: `$XDG_CONFIG_HOME/caddy` (`/config/caddy` in the Docker image),
    else `~/.config/caddy`, else `./caddy`."""
    env = os.environ if environ is None else environ
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / "caddy"
    if env.get("HOME"):
        return Path(env["HOME"]) / ".config" / "caddy"
    return Path("./caddy")


def autosave_path(environ: Mapping[str, str] | None = None) -> Path:
    return app_config_dir(environ) / "autosave.json"


def persist_enabled(config: Mapping[str, Any]) -> bool:
    """`admin.config.persist` defaults to true."""
    admin = config.get("admin")
    if not isinstance(admin, Mapping):
        return True
    settings = admin.get("config")
    if not isinstance(settings, Mapping):
        return True
    return settings.get("persist") is not False


def persist_config(config: Mapping[str, Any], path: Path | None = None) -> Path | None:
    """Write `config` to the autosave file (atomically, mode 0600) unless the config turns
    persistence off. Failures are logged, not raised: like Caddy, a config in service stays
    in service when the autosave cannot be written. Returns the path written."""
    if not persist_enabled(config):
        return None
    target = path or autosave_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".autosave-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(go_json(config).rstrip(b"\n"))
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.error("unable to autosave config to %s: %s", target, exc)
        return None
    log.info("autosaved config to %s", target)
    return target
