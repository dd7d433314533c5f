#!/usr/bin/env bash
# The GPU Celery worker (docker-compose.yml, profile `gpu`): serves only queue `gpu`, and only
# with a usable CUDA device. Tasks there train with `train.device: auto`, which would fall back
# to the CPU in silence on a worker without CUDA; so this worker refuses to start instead (and
# its healthcheck fails if the device disappears later).
set -euo pipefail
python - <<'PY'
import sys

import torch

if not torch.version.cuda:
    sys.exit(f"gpu worker: torch {torch.__version__} is a CPU build (no torch.version.cuda); "
             "build the image with TORCH_FLAVOR=cuXXX")
if not torch.cuda.is_available():
    sys.exit("gpu worker: no CUDA device visible (NVIDIA driver + container toolkit, "
             "deploy.resources.reservations.devices); refusing to serve queue gpu on the CPU")
print(f"gpu worker: torch {torch.__version__} cuda {torch.version.cuda} "
      f"device {torch.cuda.get_device_name(0)}", flush=True)
PY
exec airflow celery worker --queues gpu --concurrency 1
