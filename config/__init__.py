"""Pure config front end: Caddyfile -> Caddy JSON -> typed model. No I/O besides reading files."""
