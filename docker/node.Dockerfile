# syntax=docker/dockerfile:1
# The SIP presence node (presence-node). Build from the repository root:
#   docker build -f docker/node.Dockerfile -t presence-node:0.1.0 .
#   podman build --format docker -f docker/node.Dockerfile -t presence-node:0.1.0 .
# (podman: --format docker keeps the HEALTHCHECK, which the OCI format drops.)
# tests/test_images.py builds and runs it with podman (presence-cluster images);
# tests/test_chart.py lints it (multi-stage, non-root, HEALTHCHECK, pinned
# base and dependencies).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, in a layer that code changes do not invalidate, pinned
# by docker/constraints.txt (pip freeze of the project's tested .venv): the
# project is installed once as empty packages (all pip needs to resolve
# pyproject.toml), then with its code and no dependencies.  pip and
# setuptools leave the venv afterwards (23 MB the image never runs).
COPY docker/constraints.txt /src/docker/constraints.txt
COPY pyproject.toml /src/
RUN mkdir -p node/presence_node operator/presence_operator && touch README.md \
 && /opt/venv/bin/pip install -c docker/constraints.txt --no-compile . \
 && /opt/venv/bin/pip uninstall -q -y sip-presence-cluster \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib
COPY README.md /src/
COPY node /src/node
COPY operator /src/operator
RUN /opt/venv/bin/pip install -c docker/constraints.txt --no-compile --no-deps . \
 && /opt/venv/bin/pip uninstall -q -y pip setuptools \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib/python3*/site-packages/presence_*

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="presence-node" \
      org.opencontainers.image.description="Clustered SIP presence node (presence, winfo, BLF, SLA)"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 presence \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/presence --shell /usr/sbin/nologin presence \
 && mkdir -p /var/lib/presence && chown 10001:10001 /var/lib/presence
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/presence
USER 10001:10001
# SIP (UDP and TCP) and the admin API (GET /healthz needs no secret).
EXPOSE 5060/udp 5060/tcp 8081/tcp
# presence-node healthcheck probes the admin address PID 1 was started with
# (its --admin flag or --config file), so a changed --admin is followed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["presence-node", "healthcheck"]
ENTRYPOINT ["presence-node"]
CMD ["--sip", "0.0.0.0:5060", "--admin", "0.0.0.0:8081", "--log-format", "json"]
