# syntax=docker/dockerfile:1
# The operator (presence-operator: kopf run with the project's handlers).
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t presence-operator:0.1.0 .
# Not built on the development machines (no container engine there):
# tests/test_chart.py lints this file (multi-stage, non-root, HEALTHCHECK,
# pinned base and dependencies).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY docker/constraints.txt /src/docker/constraints.txt
COPY pyproject.toml README.md /src/
COPY node /src/node
COPY operator /src/operator
RUN /opt/venv/bin/pip install -c docker/constraints.txt --no-compile . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="presence-operator" \
      org.opencontainers.image.description="Kubernetes operator of the clustered SIP presence service"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 presence \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin presence
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
# kopf's liveness endpoint (the chart's livenessProbe and helm test use it).
EXPOSE 8080/tcp
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["presence-operator"]
CMD ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
