#!/usr/bin/env bash
# Set up, then lint and run the test suite (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check embed_pipeline embed_pipeline_tests bench
exec .venv/bin/python -m pytest -q "$@"
