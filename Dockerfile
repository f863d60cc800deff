# syntax=docker/dockerfile:1
# One image for both daemons and the CLI:
#   docker run IMAGE                  -> aam-bridge (the default CMD)
#   docker run IMAGE dcl-worker
#   docker run IMAGE aam-dcl status   (or just: docker run IMAGE status)
# Pinned by version; pin by digest too when promoting to production.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a venv with the dependencies, then the package ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone: editing the source does not
# invalidate this (slow) layer, only changing the dependency list does.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# Then the source, installed without touching the dependencies again.
COPY README.md ./
COPY shared/ shared/
COPY services/ services/
RUN pip install --no-cache-dir --no-deps . \
 && pip check

# ---- runtime: the venv only, no compilers, no pip cache, no source tree ---------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="aam-dcl" \
      org.opencontainers.image.description="aam-bridge and dcl-worker daemons and the aam-dcl CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    METRICS_HOST=0.0.0.0

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 aamdcl \
 && useradd --system --uid 10001 --gid aamdcl --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin aamdcl \
 && mkdir -p /data \
 && chown aamdcl:aamdcl /data

COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/aam-dcl-entrypoint

USER 10001:10001
WORKDIR /data
# aam-bridge serves /metrics /healthz /readyz on 9101, dcl-worker on 9102.
EXPOSE 9101 9102

# /healthz on the running daemon's port: METRICS_PORT if set, else the daemon's
# default, told apart by PID 1's command line (slim images have no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; cmd = open('/proc/1/cmdline', 'rb').read(); port = os.environ.get('METRICS_PORT') or ('9102' if b'dcl-worker' in cmd else '9101'); urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]

# Exec form, and the entrypoint execs the command: the daemon is PID 1 and
# receives SIGTERM itself, so its graceful shutdown runs.
ENTRYPOINT ["/usr/local/bin/aam-dcl-entrypoint"]
CMD ["aam-bridge"]
