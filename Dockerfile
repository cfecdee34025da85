# shipway's image for production mode (docker-compose.yml): API, worker, relay and
# migrations all run from it, with `shipway <command>`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs (see .dockerignore); dependencies come from pyproject.toml.
COPY pyproject.toml README.md ./
COPY src ./src
COPY workers ./workers
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin shipway \
    && mkdir -p /data \
    && chown shipway /data

# SHIPWAY_DATA_DIR holds uploaded sources and build logs; compose shares it between
# the API and the workers with a volume.
ENV SHIPWAY_DATA_DIR=/data \
    SHIPWAY_API_HOST=0.0.0.0 \
    SHIPWAY_API_PORT=8470
VOLUME ["/data"]
USER shipway
EXPOSE 8470

ENTRYPOINT ["shipway"]
CMD ["api", "--host", "0.0.0.0"]
