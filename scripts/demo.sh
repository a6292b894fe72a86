#!/usr/bin/env bash
# Set up, then materialize every asset on the bundled SciFact sample, offline on CPU, and print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/embed-pipeline demo "$@"
