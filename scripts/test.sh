#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: set-up (packages, venv, test
# packages, build), then the Catch2 unit tests (ctest), the Python
# integration tests (pytest) and the CPU container image build + runc smoke
# test. Exit status is non-zero if anything failed.
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

echo "== image (deploy/image/check.sh: CPU image build + runc smoke test) =="
# About 1-2 min on the 2-core CI machine (docs/deploy.md); needs root for mmdebstrap and runc,
# and installs mmdebstrap, umoci, skopeo and runc from Debian when missing.
if [[ $(id -u) -ne 0 ]]; then
  echo "image build + smoke test: SKIPPED (needs root: mmdebstrap --mode=root and runc)"
elif deploy/image/check.sh; then
  echo "image build + smoke test: PASS"
else
  echo "image build + smoke test: FAIL"
  status=1
fi

exit $status
