# syntax=docker/dockerfile:1
# The SIP presence node (presence-node). Build from the repository root:
#   docker build -f docker/node.Dockerfile -t presence-node:0.1.0 .
# Not built on the development machines (no container engine there):
# tests/test_chart.py lints this file (multi-stage, non-root, HEALTHCHECK,
# pinned base and dependencies).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first (a layer cached while only the code changes), pinned by
# docker/constraints.txt (pip freeze of the project's tested .venv).
COPY docker/constraints.txt /src/docker/constraints.txt
COPY pyproject.toml README.md /src/
COPY node /src/node
COPY operator /src/operator
RUN /opt/venv/bin/pip install -c docker/constraints.txt --no-compile . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="presence-node" \
      org.opencontainers.image.description="Clustered SIP presence node (presence, winfo, BLF, SLA)"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 presence \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/presence --shell /usr/sbin/nologin presence \
 && mkdir -p /var/lib/presence && chown 10001:10001 /var/lib/presence
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/presence
USER 10001:10001
# SIP (UDP and TCP) and the admin API (GET /healthz needs no secret).
EXPOSE 5060/udp 5060/tcp 8081/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["presence-node"]
CMD ["--sip", "0.0.0.0:5060", "--admin", "0.0.0.0:8081", "--log-format", "json"]
