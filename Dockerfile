# pyproxy as a drop-in for the official `caddy` image: same mounts (/etc/caddy, /data, /config),
# same ports, same default command shape, and a `caddy` command so `docker exec … caddy reload`
# keeps working. BASE can be any Debian-based image with Python >= 3.11: the usual slim Python
# image, or a local debootstrap base with python3, python3-venv and python3-pip (DESIGN.md §7).
#
# It runs as root, like the caddy image: volumes carried over from a caddy deployment hold
# root-owned 0600 keys and certificates that another user could not read, `docker exec … caddy
# reload` runs as the same user, and binding 80/443 needs no file capability (which some
# storage drivers drop). A derived image may add a user and `setcap cap_net_bind_service=+ep`
# on the interpreter if its volumes are fresh.
ARG BASE=python:3.11-slim-bookworm

# ---- build stage: the venv, with the request path compiled by mypyc (proxy/native.py) ---------
FROM ${BASE} AS build

# Package-index settings for the build only (never stored in the image's ENV). Empty values are
# ignored by pip, so a plain `docker build .` uses pip's defaults.
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_CERT=
ARG PIP_DEFAULT_TIMEOUT=
ENV PYTHONDONTWRITEBYTECODE=1

# A C compiler and Python's headers, in this stage only (the final image gets neither).
RUN has_headers() { python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; } \
 && if ! command -v gcc >/dev/null || ! has_headers; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc libc6-dev \
      && { has_headers || apt-get install -y --no-install-recommends python3-dev; } \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# Dependencies first, from pyproject.toml alone (empty packages stand in for the sources), so
# editing the code does not reinstall them. The stubs and setuptools' build/ go afterwards:
# build/ would keep the stubs, which are newer than the real files copied next. mypy (mypyc)
# goes into a separate venv that stays in this stage.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN mkdir -p config acme_client proxy \
 && touch config/__init__.py acme_client/__init__.py proxy/__init__.py \
 && python3 -m venv /opt/pyproxy \
 && /opt/pyproxy/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/pyproxy/bin/pip uninstall -y pyproxy \
 && rm -rf build *.egg-info config acme_client proxy \
 && python3 -m venv /opt/native-tools \
 && /opt/native-tools/bin/pip install --no-cache-dir --disable-pip-version-check "mypy>=1.10" "setuptools>=68"

COPY config ./config
COPY acme_client ./acme_client
COPY proxy ./proxy
# The native build runs with the image's interpreter on the installed package; mypy is borrowed
# from the tools venv. A failed build leaves pyproxy interpreted (`pyproxy version` says so).
RUN /opt/pyproxy/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
 && cd / && rm -rf /src \
 && tools=$(/opt/native-tools/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && { PYTHONPATH=$tools /opt/pyproxy/bin/python -m proxy.native_build --quiet \
      || echo "native build failed: the image runs pyproxy interpreted" >&2; } \
 && /opt/pyproxy/bin/pyproxy version

# ---- the image ---------------------------------------------------------------------------------
FROM ${BASE}

# PYPROXY_WORKERS=N sets the number of worker processes when `--workers` is not given (default:
# one per usable core); e.g. `docker run -e PYPROXY_WORKERS=2 …`. A bad value fails the start.
ENV XDG_CONFIG_HOME=/config \
    XDG_DATA_HOME=/data \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/pyproxy/bin:$PATH

COPY --from=build /opt/pyproxy /opt/pyproxy
RUN /opt/pyproxy/bin/pyproxy version

# /usr/bin/caddy is where the caddy image has its binary, so absolute paths keep working too.
COPY docker/caddy /usr/bin/caddy
COPY docker/healthcheck /usr/local/bin/pyproxy-healthcheck
COPY docker/Caddyfile /etc/caddy/Caddyfile
RUN chmod 0755 /usr/bin/caddy /usr/local/bin/pyproxy-healthcheck \
 && mkdir -p /data /config /srv \
 && caddy validate --config /etc/caddy/Caddyfile

VOLUME ["/data", "/config"]
EXPOSE 80 443
WORKDIR /srv

# No curl in the image: the check is a small Python script (admin API, else the listeners).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["pyproxy-healthcheck"]

CMD ["pyproxy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
