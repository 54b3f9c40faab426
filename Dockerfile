# edgesched node image: `docker build -t edgesched .`, then see configs/compose.yaml and
# docs/install.md. The builder stage makes a self-contained venv at $VIRTUAL_ENV; the runtime
# stage copies only that venv (same base image, same path) and the default config.
#
# tests/ops/test_docker.py replays the builder stage's RUN steps outside Docker, so keep every
# RUN of the builder stage free of absolute paths: use $VIRTUAL_ENV and paths relative to WORKDIR.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV VIRTUAL_ENV=/opt/edgesched \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv "$VIRTUAL_ENV"
COPY pyproject.toml README.md constraints.txt ./
COPY edgesched ./edgesched
# Installs the package (no extras: a gateway needs no demo broker) with the exact versions of
# constraints.txt, the resolution the suite was run with (scripts/lock-constraints.sh), so
# rebuilding the image later gets the same dependencies; the final `version` call fails the
# build when the installed entry point cannot even start.
RUN "$VIRTUAL_ENV/bin/pip" install --no-cache-dir -c constraints.txt . \
    && "$VIRTUAL_ENV/bin/edgesched" version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="edgesched" \
      org.opencontainers.image.description="Deadline- and energy-aware task scheduling for edge nodes" \
      org.opencontainers.image.licenses="Apache-2.0"
# CREDENTIALS_DIRECTORY: the config resolves relative secret paths there and picks up files
# named mqtt_password / cloud_token / http_token by itself, so Docker secrets
# (/run/secrets/NAME) just work. The baked config binds the API to 0.0.0.0, so the container
# needs the http_token secret (protected mode: without it `run` exits 78 and says so).
ENV VIRTUAL_ENV=/opt/edgesched \
    PATH=/opt/edgesched/bin:$PATH \
    EDGESCHED_CONFIG=/etc/edgesched/edgesched.yaml \
    CREDENTIALS_DIRECTORY=/run/secrets \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=builder /opt/edgesched /opt/edgesched
COPY configs/docker/edgesched.yaml /etc/edgesched/edgesched.yaml
# The incarnation counter (state_dir) must survive restarts: mount a volume here.
RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/edgesched
VOLUME ["/var/lib/edgesched"]
USER 10001:10001
EXPOSE 8470
STOPSIGNAL SIGTERM
# No --url: the address comes from the config (0.0.0.0 is asked on 127.0.0.1), so it follows
# http.port when EDGESCHED_HTTP__PORT or a mounted config changes it. /healthz needs no token.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["edgesched", "healthcheck", "--timeout", "4"]
ENTRYPOINT ["edgesched"]
CMD ["run"]
