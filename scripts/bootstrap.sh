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
    # the report test renders pages in headless Chromium (Debian's package); install it when missing
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
      sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
      $sudo_cmd apt-get update -qq >/dev/null && \
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null \
        || echo "bootstrap: could not install chromium; tests/test_report.py will say so" >&2
    fi
    .venv/bin/ruff check .
    bash scripts/lint_imports.sh
    .venv/bin/python -m pytest
    ;;
  *)
    echo "usage: bash scripts/bootstrap.sh [demo|test]" >&2
    exit 2
    ;;
esac
