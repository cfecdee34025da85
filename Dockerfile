# shipway's image for production mode (docker-compose.yml, deploy/stack.yml): API, workers,
# relay, router (HAProxy) and migrations all run from it, with `shipway <command>`.
#
# BASE is any Debian bookworm image: python:3.11-slim (the default, from Docker Hub), or a
# plain Debian (debian:bookworm-slim, or the debootstrapped shipway/debian:bookworm that
# `make images` imports when no registry is reachable); Debian's python3 is then installed.
# Python packages come from PyPI, or from a wheelhouse: a `wheels/` folder in the build
# context is installed with --no-index (scripts/images.sh stages such a context).
ARG BASE=python:3.11-slim

FROM ${BASE} AS system
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive
RUN set -eux; \
    packages="haproxy ca-certificates"; \
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        packages="$packages python3 python3-venv"; \
    fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/shipway

FROM system AS install
COPY . /tmp/context
RUN set -eux; \
    cd /tmp/context; \
    if ls wheels/*.whl >/dev/null 2>&1; then \
        /opt/shipway/bin/pip install --no-index --find-links wheels shipway; \
    else \
        /opt/shipway/bin/pip install .; \
    fi

FROM system
COPY --from=install /opt/shipway /opt/shipway
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin shipway \
    && mkdir -p /app /data \
    && chown shipway /data
WORKDIR /app
# SHIPWAY_DATA_DIR holds uploaded sources, build logs and the router's state folder;
# the topologies share it between the services with a volume.
ENV PATH=/opt/shipway/bin:$PATH \
    SHIPWAY_DATA_DIR=/data \
    SHIPWAY_API_HOST=0.0.0.0 \
    SHIPWAY_API_PORT=8470
VOLUME ["/data"]
USER shipway
EXPOSE 8470

ENTRYPOINT ["shipway"]
CMD ["api", "--host", "0.0.0.0"]
