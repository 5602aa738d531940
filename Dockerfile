# pyproxy as a drop-in for the `caddy` image: same volumes (/etc/caddy, /data, /config),
# same ports, same default command shape. BASE can be any Debian-based image with Python >= 3.11
# (the usual slim Python image, or a local debootstrap base: see DESIGN.md, Containers).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV XDG_CONFIG_HOME=/config \
    XDG_DATA_HOME=/data \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY acme_client ./acme_client
COPY proxy ./proxy
RUN python3 -m venv /opt/pyproxy \
 && /opt/pyproxy/bin/pip install --no-cache-dir . \
 && ln -s /opt/pyproxy/bin/pyproxy /usr/local/bin/pyproxy \
 && mkdir -p /etc/caddy /data /config \
 && cp /src/README.md /etc/caddy/README.pyproxy.md

VOLUME ["/data", "/config"]
EXPOSE 80 443
WORKDIR /srv
CMD ["pyproxy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
