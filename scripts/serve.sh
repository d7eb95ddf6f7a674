#!/usr/bin/env bash
# Starts pt2serve on the bundled demo model (the zoo's `mlp`) after set-up.
# Inference (KServe v2 + pt2serve.v1) on 127.0.0.1:8001, Prometheus metrics on
# :8002, admin API on :8003 with the bearer token in build/admin.token (made
# on first use). Extra arguments go to the daemon (see `pt2serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source build/env.sh
if [[ ! -s build/admin.token ]]; then
  (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > build/admin.token)
fi
exec build/server/pt2serve --model "mlp=$PT2SERVE_MODEL_DIR/mlp.pt2:runners=2" \
  --model-repository "$PT2SERVE_MODEL_DIR" --admin-token-file build/admin.token "$@"
