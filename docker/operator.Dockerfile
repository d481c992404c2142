# The mlplane operator image: Kopf, the Kubernetes client, the MLflow *client* and boto3 (the
# `operator` extra) on slim Python 3.11. No Ray, no MLflow server, no compilers, no pip.
#
#   docker build -f docker/operator.Dockerfile -t mlplane-operator:dev .
#
# Run from the repository root (the build context); docker/operator.Dockerfile.dockerignore
# keeps the context to what the wheel needs. The Helm chart runs it with a read-only root
# filesystem, an emptyDir on /tmp and uid 10001; the probe is Kopf's liveness endpoint
# (GET :8080/healthz), which the HEALTHCHECK below also uses outside Kubernetes.

# --- build: install mlplane[operator] into a self-contained virtualenv ----------------------------
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
# Bytecode is compiled here because the runtime filesystem is read-only.
RUN python -m venv /opt/mlplane \
 && /opt/mlplane/bin/pip install ".[operator]" \
 && /opt/mlplane/bin/python -c "import kopf, kubernetes, mlflow, prometheus_client, boto3, mlplane.operator" \
 && if /opt/mlplane/bin/python -c "import ray" 2>/dev/null; then echo "ray must not be in the operator image" >&2; exit 1; fi \
 && /opt/mlplane/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/mlplane/bin/python -m compileall -q /opt/mlplane/lib

# --- runtime ----------------------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="mlplane-operator" \
      org.opencontainers.image.description="mlplane operator: TrainingJob, ModelDeployment and ABTest on KubeRay" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base image's own pip/setuptools are build tools: remove them; add the unprivileged user.
RUN python -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel \
 && groupadd --system --gid 10001 mlplane \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mlplane
COPY --from=build /opt/mlplane /opt/mlplane
# HOME=/tmp: the only writable place under readOnlyRootFilesystem (the chart mounts an emptyDir).
ENV PATH=/opt/mlplane/bin:${PATH} \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["mlplane"]
CMD ["operator", "--all-namespaces", "--liveness", "http://0.0.0.0:8080/healthz", "--metrics-port", "9090"]
