#!/usr/bin/env bash
# Set up, then lint and run the test suite (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The deployment test runs a real PostgreSQL (Debian's package); install it where it is missing and we can.
if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "warning: PostgreSQL is not installed; the deployment test will fail (sudo apt-get install postgresql)" >&2
  fi
fi
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check embed_pipeline embed_pipeline_tests bench
exec .venv/bin/python -m pytest -q "$@"
