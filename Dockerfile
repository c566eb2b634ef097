# Fluxback container image.
#
# BASE is any Debian bookworm root filesystem. From a registry, pin it by digest, e.g.
#   --build-arg BASE=docker.io/library/debian:bookworm-slim@sha256:<digest>
# Without a registry, scripts/image-smoke makes one with debootstrap (localhost/debian:bookworm-min).
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret (never a layer):
#   --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE=docker.io/library/debian:bookworm-slim

# Stage 1: the wheels (fluxback and its dependencies) installed into a self-contained venv.
FROM ${BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.11.* python3-venv=3.11.* ca-certificates=2023* \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY receiver ./receiver
# Binary wheels only: the final image has no compiler, and neither does this stage.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 -m venv /opt/fluxback \
 && /opt/fluxback/bin/pip wheel --no-cache-dir --only-binary=:all: --wheel-dir /wheels /src \
 && /opt/fluxback/bin/pip install --no-cache-dir --no-index --find-links /wheels fluxback \
 && /opt/fluxback/bin/pip uninstall --yes pip

# Stage 2: the runtime. git fetches the GitOps repositories; the OpenSSH client verifies
# signed commits (ssh-keygen) and fetches over SSH.
FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="fluxback" \
      org.opencontainers.image.description="Flux CD events in, Airflow 3 task states, DAG runs and asset events out" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.11.* git=1:2.39.* openssh-client=1:9.2* ca-certificates=2023* \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 fluxback \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fluxback
COPY --from=build /opt/fluxback /opt/fluxback
ENV PATH=/opt/fluxback/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLUXBACK_CONFIG=/etc/fluxback/config.yaml
USER 10001:10001
EXPOSE 9292
ENTRYPOINT ["fluxback", "serve"]
