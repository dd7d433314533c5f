#!/usr/bin/env bash
# Creates .venv/ at the repo root with everything the demo and the tests need.
# Idempotent: a second run only re-checks. Needs Python 3.11 and pip, nothing else.
#   - torch: the local CPU wheel when present (no CUDA download), else the package index
#     (on a GPU machine, pip's default torch wheel brings CUDA).
#   - everything else: pinned by requirements/lock-py311.txt (pip freeze, torch excluded).
#   - Debian tools the integration tests use (prometheus, pushgateway, promtool, docker-compose
#     v1) are installed with apt when we are root and apt-get exists; otherwise those tests skip
#     locally (and fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
TORCH_WHEEL=${ATFT_TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
STAMP=.venv/.atft-bootstrap
want="$(cat requirements/lock-py311.txt requirements/no-deps.txt pyproject.toml | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  :
else
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip wheel
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if [ -f "$TORCH_WHEEL" ]; then
      .venv/bin/pip install -q "$TORCH_WHEEL"
    else
      .venv/bin/pip install -q torch
    fi
  fi
  .venv/bin/pip install -q -c requirements/lock-py311.txt -e ".[airflow,test,dev]"
  .venv/bin/pip install -q --no-deps -r requirements/no-deps.txt  # see the file for why
  echo "$want" > "$STAMP"
fi

if [ "${ATFT_SKIP_APT:-0}" != "1" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the services on install; the tests start their own on 127.0.0.1.
    for svc in prometheus prometheus-pushgateway prometheus-node-exporter; do
      (service "$svc" stop || true) >/dev/null 2>&1
    done
  fi
fi
