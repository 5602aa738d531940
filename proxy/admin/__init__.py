"""The admin API: Caddy's management endpoint (default `localhost:2019`), built on aiohttp.

Split by concern:
- `controller`: `AdminController`, the interface the engine implements (load a config, report
  the current one, stop, list upstreams, render metrics), and `ReloadError`;
- `config_paths` (pure): `/config/` traversal and mutation, the `@id` index, Go-style JSON;
- `origins` (pure): the `listen` address, the `admin` object's settings, Caddy's Host/Origin
  protections;
- `autosave`: `autosave.json` in Caddy's AppConfigDir (`admin.config.persist`);
- `api`: the HTTP surface (`POST /load`, `POST /adapt`, `/config/<path>`, `/id/<id>/<path>`,
  `POST /stop`, `GET /metrics`, `GET /reverse_proxy/upstreams`, `GET /pyproxy/certificates`);
- `server`: the listener's lifecycle from each config's `admin` object (`start_admin_server`,
  `AdminServer.update/close`), its sockets bound by proxy.listen.

This package re-exports the names code outside it uses.
"""

from __future__ import annotations

from proxy.admin.api import build_admin_app
from proxy.admin.autosave import app_config_dir, autosave_path
from proxy.admin.config_paths import config_access, index_ids, strip_meta_fields
from proxy.admin.controller import ReloadError
from proxy.admin.origins import default_admin_listen, parse_admin_listen
from proxy.admin.server import AdminServer, start_admin_server

__all__ = [
    "AdminServer",
    "ReloadError",
    "app_config_dir",
    "autosave_path",
    "build_admin_app",
    "config_access",
    "default_admin_listen",
    "index_ids",
    "parse_admin_listen",
    "start_admin_server",
    "strip_meta_fields",
]
