#!/usr/bin/env bash
# Starts pt2serve on the bundled demo model (the zoo's `mlp`) after set-up.
# Inference (KServe v2 + pt2serve.v1) on 127.0.0.1:8001, metrics on :8002,
# admin on :8003. Extra arguments go to the daemon (see `pt2serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source build/env.sh
exec build/server/pt2serve --model "mlp=$PT2SERVE_MODEL_DIR/mlp.pt2" "$@"
