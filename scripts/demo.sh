#!/usr/bin/env bash
# The main job: the nightly atft_retrain DAG end to end, twice, on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/atft demo "$@"
