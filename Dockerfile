# syntax=docker/dockerfile:1
#
# The one image of the project: the operator (`sovereign run`), the GPU node agent
# (`sovereign agent`) and the model loader (`sovereign fetch-model`) are sub-commands of the same
# entry point, so the chart, the DaemonSet and the loader init containers all pull one image.
#
#   docker build -t ghcr.io/sovereign-ai/sovereign-operator:0.1.0 .
#
# Two stages: `build` installs the package and its dependencies into a virtual environment
# (every dependency ships wheels, so not even this stage needs a compiler); the final stage
# copies that environment onto a clean slim base. The final stage runs as a numeric non-root
# user (so Kubernetes can verify runAsNonRoot without a passwd lookup) and writes nothing to its
# root filesystem: the bytecode is compiled at build time and the chart mounts an emptyDir on
# /tmp, so the pods run with readOnlyRootFilesystem: true.
# tests/unit/chart/test_dockerfile.py checks these rules, since no engine builds the image in CI.
# Without an engine, `python -m sovereign_dev.images` writes the same image for the local real
# node: it reads the venv path and the final stage's ENV, USER, ENTRYPOINT, CMD and LABELs from
# this file, so change them here only (tests/unit/dev/test_operator_image.py compares the two).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sovereign
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
# pip compiles the bytecode while installing, so the read-only final image never needs to.
RUN /opt/sovereign/bin/pip install . \
 && /opt/sovereign/bin/sovereign --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sovereign-stack-operator" \
      org.opencontainers.image.description="SovereignStack operator, GPU node agent and model loader" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/sovereign /opt/sovereign
ENV PATH=/opt/sovereign/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# 65532 is the conventional "nonroot" id of distroless images; no passwd entry is needed.
USER 65532:65532
ENTRYPOINT ["sovereign"]
CMD ["--help"]
