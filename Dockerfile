# syntax=docker/dockerfile:1
# The atp image: one image for the API (`atp serve`), the consumer (`atp consume`) and
# `atp rebuild`. Build: docker build -t atp:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the same install as the Makefile (python -m venv + pip install .) ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The build context is filtered by .dockerignore (no .venv, tests, helm, caches, ...).
COPY . .
RUN pip install . \
    && python -m compileall -q /opt/venv/lib

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
