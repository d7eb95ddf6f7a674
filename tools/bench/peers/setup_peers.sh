#!/usr/bin/env bash
# Creates the venv of the peer servers (PyTriton, the grpcio KServe server) for run_peers.sh.
#   tools/bench/peers/setup_peers.sh [VENV]   (default $PT2SERVE_PEERS_VENV or ~/.cache/pt2serve/peers-venv)
# torch: the version of $PROJECT_PY (default <repo>/.venv/bin/python), or $PEERS_TORCH (a pip
# requirement such as "torch==2.11.0"), so the venv loads the packages that torch exported.
# Idempotent: skipped when the requirements and the torch requirement did not change.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
VENV=${1:-${PT2SERVE_PEERS_VENV:-$HOME/.cache/pt2serve/peers-venv}}
PROJECT_PY=${PROJECT_PY:-$REPO/.venv/bin/python}
if [[ -z ${PEERS_TORCH:-} ]]; then
  ver=$("$PROJECT_PY" -c 'import torch; print(torch.__version__.split("+")[0])') \
    || { echo "setup_peers.sh: no torch in $PROJECT_PY; set PEERS_TORCH" >&2; exit 2; }
  PEERS_TORCH="torch==$ver"
fi
stamp="$(sha256sum "$HERE/requirements.txt" | cut -c1-16) $PEERS_TORCH"
if [[ "$(cat "$VENV/.peers-stamp" 2>/dev/null)" == "$stamp" ]]; then
  echo "$VENV"; exit 0
fi
echo "[peers] creating $VENV ($PEERS_TORCH + $HERE/requirements.txt)" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "$PEERS_TORCH" -r "$HERE/requirements.txt" >&2
echo "$stamp" > "$VENV/.peers-stamp"
echo "$VENV"
