# syntax=docker/dockerfile:1
# The atp image: one image for the API (`atp serve`), the consumer (`atp consume`) and
# `atp rebuild`. Build: docker build -t atp:0.1.0 .
#
# It holds the runtime set of uv.lock only: no bundled broker, no test or benchmark
# packages. tests/integration/test_runtime_install.py runs this file's `uv sync` line into
# a clean venv and checks what it installs.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the locked runtime set into /opt/venv -----------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

RUN pip install "uv==0.13.9"

WORKDIR /src
# The build context is filtered by .dockerignore (no .venv, tests, helm, caches, ...).
COPY . .
# --locked: a uv.lock that no longer matches pyproject.toml stops the build.
RUN uv sync --locked --no-dev --no-editable

# ---- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --gid 10001 atp \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/atp \
        --shell /usr/sbin/nologin atp

# The venv's python links to /usr/local/bin/python3.11, the same path in both stages.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /home/atp
USER 10001:10001
EXPOSE 8000

ENTRYPOINT ["atp"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
