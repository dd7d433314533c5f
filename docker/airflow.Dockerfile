# Airflow 3.3 image with atft_core installed (api-server, scheduler, dag-processor, triggerer,
# CPU and GPU Celery workers all run it). Build from the repo root:
#   docker build -f docker/airflow.Dockerfile -t atft-airflow:3.3.2 .                       # CPU torch
#   docker build -f docker/airflow.Dockerfile --build-arg TORCH_FLAVOR=cu128 -t atft-airflow-gpu:3.3.2 .
# Decisions:
# * torch is installed first from the PyTorch index for the chosen flavour (cpu wheel: ~200 MB;
#   cuXXX wheel brings its CUDA runtime, so the host only needs the NVIDIA driver + toolkit);
#   the lock file excludes torch, everything else is pinned by requirements/lock-py311.txt.
# * atft_core is installed editable from /opt/atft so include/configs (read relative to the
#   package) resolves; docker-compose mounts ./include over it for live config edits.
# * /opt/airflow/var is created owned by airflow and group-writable (gid 0) so the named volume
#   mounted there (shared run and work directories: a model trained on the GPU worker is
#   evaluated on the CPU worker) starts writable; airflow-init chowns it to AIRFLOW_UID.
# * A non-cpu TORCH_FLAVOR must produce a CUDA torch build (torch.version.cuda), else the build
#   fails; the FAB provider (login of the compose stack) is pinned and import-checked.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION=3.3.2
ARG TORCH_VERSION=2.13.0
ARG TORCH_FLAVOR=cpu
# FAB auth manager (the compose stack's login). 3.10.2 needs apache-airflow>=3.0.2 and
# common-compat>=1.20 (lock: 1.23.0); `pip install --dry-run -c requirements/lock-py311.txt
# apache-airflow==3.3.2 apache-airflow-providers-fab==3.10.2` resolves.
ARG FAB_PROVIDER_VERSION=3.10.2

USER airflow
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
        --index-url "https://download.pytorch.org/whl/${TORCH_FLAVOR}"

COPY --chown=airflow:0 requirements/lock-py311.txt /opt/atft/requirements/lock-py311.txt
COPY --chown=airflow:0 pyproject.toml README.md* /opt/atft/
COPY --chown=airflow:0 atft_core /opt/atft/atft_core
COPY --chown=airflow:0 include /opt/atft/include
RUN pip install --no-cache-dir -c /opt/atft/requirements/lock-py311.txt \
        "apache-airflow==${AIRFLOW_VERSION}" "apache-airflow-providers-fab==${FAB_PROVIDER_VERSION}" \
        -e "/opt/atft[airflow]" \
    && python -c "import atft_core, torch; print('atft_core', atft_core.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && python -c "from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager"
# jquants-api-client without its stale tenacity<9 pin (requirements/no-deps.txt says why)
COPY --chown=airflow:0 requirements/no-deps.txt /opt/atft/requirements/no-deps.txt
RUN pip install --no-cache-dir --no-deps -r /opt/atft/requirements/no-deps.txt \
    && python -c "import jquantsapi; jquantsapi.ClientV2"

# A CUDA flavour must really be a CUDA build: fail the build, not the first training run.
RUN if [ "${TORCH_FLAVOR}" != "cpu" ]; then \
        python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'torch ' + torch.__version__ + ' has no CUDA build (torch.version.cuda is None) but TORCH_FLAVOR=${TORCH_FLAVOR}')"; \
    fi

# group 0 may write (any AIRFLOW_UID runs with gid 0); airflow-init also chowns to AIRFLOW_UID
RUN mkdir -p /opt/airflow/var/runs /opt/airflow/var/work /opt/airflow/var/metrics /opt/airflow/var/hpo \
    && chmod -R g+rwX /opt/airflow/var
ENV ATFT_TORCH_FLAVOR=${TORCH_FLAVOR}
WORKDIR /opt/airflow
