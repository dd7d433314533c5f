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
# * /opt/airflow/var is created owned by airflow so the named volume mounted there (shared run
#   and work directories: a model trained on the GPU worker is evaluated on the CPU worker)
#   starts writable.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION=3.3.2
ARG TORCH_VERSION=2.13.0
ARG TORCH_FLAVOR=cpu

USER airflow
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
        --index-url "https://download.pytorch.org/whl/${TORCH_FLAVOR}"

COPY --chown=airflow:0 requirements/lock-py311.txt /opt/atft/requirements/lock-py311.txt
COPY --chown=airflow:0 pyproject.toml README.md* /opt/atft/
COPY --chown=airflow:0 atft_core /opt/atft/atft_core
COPY --chown=airflow:0 include /opt/atft/include
RUN pip install --no-cache-dir -c /opt/atft/requirements/lock-py311.txt \
        "apache-airflow==${AIRFLOW_VERSION}" -e "/opt/atft[airflow]" \
    && python -c "import atft_core, torch; print('atft_core', atft_core.__version__, 'torch', torch.__version__)"

RUN mkdir -p /opt/airflow/var/runs /opt/airflow/var/work /opt/airflow/var/metrics /opt/airflow/var/hpo
ENV ATFT_TORCH_FLAVOR=${TORCH_FLAVOR}
WORKDIR /opt/airflow
