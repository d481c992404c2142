# syntax=docker/dockerfile:1
# The Ray image of mlplane's RayJobs (training) and RayServices (serving): Ray's own image with
# mlplane[serving,training] added. Ray itself is not reinstalled: the extras pin the same Ray
# version as the base image (a test keeps the two in step).
#
#   docker build -f docker/ray.Dockerfile -t mlplane-ray:dev .
#
# Probes are KubeRay's business (it sets role-specific ones on head and worker pods).

# --- build: the mlplane wheel (pure Python) -------------------------------------------------------
# Base images are pinned by tag (a test checks both stages use the same one); pin them by
# digest too when publishing (docker buildx imagetools inspect <image>).
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mlplane/ mlplane/
COPY crds/ crds/
COPY operator/ operator/
COPY monitoring/ monitoring/
COPY serving/ serving/
COPY training/ training/
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: Ray's image plus the wheel ----------------------------------------------------------
FROM rayproject/ray:2.60.0-py311 AS runtime
LABEL org.opencontainers.image.title="mlplane-ray" \
      org.opencontainers.image.description="Ray with mlplane's serving app and training runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
# Ray's image runs as the unprivileged user "ray" (uid 1000) and owns its Python: no root needed.
USER 1000
# The wheel is installed by its path (never by name from an index: no dependency confusion),
# through a bind mount so it leaves no layer behind.
RUN --mount=type=bind,from=build,source=/wheels,target=/tmp/wheels \
    set -eu; \
    wheel="$(echo /tmp/wheels/mlplane-*.whl)"; \
    pip install --no-cache-dir "${wheel}[serving,training]"; \
    python -c "import ray, mlplane.serving, mlplane.training; assert ray.__version__ == '2.60.0', ray.__version__"
WORKDIR /home/ray
HEALTHCHECK NONE
