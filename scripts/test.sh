#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: set-up (packages, venv, test
# packages, build), then the Catch2 unit tests (ctest) and the Python
# integration tests (pytest). Exit status is non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source build/env.sh

status=0
echo "== ctest (unit tests) =="
ctest --test-dir build --output-on-failure --timeout 300 -j "$(nproc)" || status=1

echo "== pytest (integration tests) =="
# -rfEs: list failures, errors and skips with reasons in the summary.
python -m pytest -q -rfEs tests/python tests/integration tests/proto tests/deploy || status=1

exit $status
