#!/usr/bin/env bash
# One entry point for a newcomer and for CI: create .venv at the repo root, install the pinned
# dependencies and the project, then run the requested job.
#   bash scripts/bootstrap.sh demo   -> fp demo on the embedded default
#   bash scripts/bootstrap.sh test   -> lint + the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-demo}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
case "$job" in
  demo)
    export FP_HOME="${FP_HOME:-$PWD/.fp}"
    .venv/bin/fp demo
    ;;
  test)
    .venv/bin/ruff check .
    bash scripts/lint_imports.sh
    .venv/bin/python -m pytest
    ;;
  *)
    echo "usage: bash scripts/bootstrap.sh [demo|test]" >&2
    exit 2
    ;;
esac
