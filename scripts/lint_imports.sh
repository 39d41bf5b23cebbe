#!/usr/bin/env bash
# The import-layer contracts of pyproject.toml ([tool.importlinter]), checked on the installed layout:
# the customer's folders copied beneath featureplane/ (import-linter reads packages from disk and
# cannot follow setuptools' package-dir mapping of the editable install).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/featureplane"
cp featureplane/*.py "$stage/featureplane/"
for folder in pipelines online offline schemas lake config runtime; do
  cp -r "$folder" "$stage/featureplane/$folder"
done
repo=$(pwd)
cd "$stage"  # not the repo: there, ./featureplane (without the folders) would shadow the staged package
PYTHONPATH="$stage" "$repo/.venv/bin/lint-imports" --config "$repo/pyproject.toml" --no-cache
