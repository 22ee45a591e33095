# syntax=docker/dockerfile:1
# The one image of every service; each Deployment of the Helm chart (deploy/helm/member-export) runs one of its
# entry points ([project.scripts] of pyproject.toml): export-scheduler, export-extractor, export-dispatcher,
# export-notifier, export-admin, and exportctl (the migration Job's `exportctl db upgrade`).
#
# Two stages: `build` makes wheels of the package and of its runtime dependencies at the versions pinned in
# constraints.txt; `runtime` installs only those wheels (no index, no compiler, no dev extra, no devtools or
# tests), removes pip, and runs as uid/gid 10001 (above 10000, as kube-score and the chart require).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY shared ./shared
COPY services ./services
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-index --find-links /wheels --constraint /tmp/constraints.txt member-export \
    && rm -rf /wheels /tmp/constraints.txt \
    && pip uninstall --yes pip setuptools wheel \
    && groupadd --gid 10001 exporter \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin exporter
USER 10001:10001
WORKDIR /tmp
CMD ["export-admin"]
