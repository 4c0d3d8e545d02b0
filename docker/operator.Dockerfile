# syntax=docker/dockerfile:1
# The operator (presence-operator: kopf run with the project's handlers).
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t presence-operator:0.1.0 .
#   podman build --format docker -f docker/operator.Dockerfile -t presence-operator:0.1.0 .
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
 && /opt/venv/bin/pip install -c docker/constraints.txt --no-compile '.[operator]' \
 && /opt/venv/bin/pip uninstall -q -y sip-presence-cluster \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib
COPY README.md /src/
COPY node /src/node
COPY operator /src/operator
RUN /opt/venv/bin/pip install -c docker/constraints.txt --no-compile --no-deps '.[operator]' \
 && /opt/venv/bin/pip uninstall -q -y pip setuptools \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib/python3*/site-packages/presence_*

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="presence-operator" \
      org.opencontainers.image.description="Kubernetes operator of the clustered SIP presence service"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 presence \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin presence
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
# kopf's liveness endpoint (the chart's livenessProbe and helm test use it).
EXPOSE 8080/tcp
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["presence-operator"]
CMD ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
