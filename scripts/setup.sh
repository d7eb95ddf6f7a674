#!/usr/bin/env bash
# One-step set-up used by both README commands (and CI):
#   1. Debian packages (apt-get; sudo when not root),
#   2. .venv with torch and the Python test dependencies,
#      (2b. perf_analyzer for the integration tests: scripts/get_perf_analyzer.sh),
#   3. the zoo test packages (cached outside the build tree),
#   4. CMake configure + Release build.
# Idempotent: each step is skipped when its inputs did not change, so a second
# run with nothing changed takes seconds. Prints `export` lines to stdout's
# last lines via build/env.sh; source that file to get PT2SERVE_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { echo "[setup] $*" >&2; }

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libtbb-dev libspdlog-dev prometheus-cpp-dev catch2 libyaml-cpp-dev
  nlohmann-json3-dev libcli11-dev libzip-dev ccache libssl-dev
)

# --- 1. Debian packages --------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# --- 2. Python venv ------------------------------------------------------------
PY=${PT2SERVE_BASE_PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
req_hash=$(sha256sum requirements.txt | cut -c1-16)
if [[ "$(cat .venv/.requirements-hash 2>/dev/null)" != "$req_hash" ]]; then
  log "installing Python requirements (torch comes from the local wheel)"
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -r requirements.txt >&2
  echo "$req_hash" > .venv/.requirements-hash
fi
VENV_PY=$ROOT/.venv/bin/python

# --- 2b. perf_analyzer for tests/integration/test_perf_analyzer.py -----------------
# Cached binary from the tritonclient 2.41.0 wheel + libcudart.so.12 + libb64-0d, behind the
# wrapper .venv/bin/perf_analyzer. Never fails set-up: on error it warns and the test skips.
scripts/get_perf_analyzer.sh || log "WARNING: scripts/get_perf_analyzer.sh failed; perf_analyzer test will skip"

# --- 2c. checkov (chart policy lint, tests/deploy) in a venv of its own -------------------
# Its pins would downgrade packages of .venv (networkx, packaging), so it never shares it.
CHECKOV_VENV=${PT2SERVE_CHECKOV_VENV:-$HOME/.cache/pt2serve/checkov-venv}
checkov_hash=$(sha256sum deploy/helm/requirements-checkov.txt | cut -c1-16)
if [[ "$(cat "$CHECKOV_VENV/.requirements-hash" 2>/dev/null)" != "$checkov_hash" ]]; then
  log "installing checkov into $CHECKOV_VENV"
  "$PY" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/python" -m pip install -q -r deploy/helm/requirements-checkov.txt >&2
  echo "$checkov_hash" > "$CHECKOV_VENV/.requirements-hash"
fi

# --- 3. Test packages (cached by torch version + exporter source) ---------------
MODEL_DIR=$("$VENV_PY" tools/export/export_model.py zoo | tail -n 1)
[[ -f "$MODEL_DIR/mlp.pt2" ]] || { log "zoo export failed"; exit 1; }
# Packages made by plain aoti_compile_and_package (no pt2serve metadata); own cache key.
PLAIN_DIR=$("$VENV_PY" tests/support/plain_packages.py | tail -n 1)
[[ -f "$PLAIN_DIR/block.pt2" ]] || { log "plain package export failed"; exit 1; }

# --- 4. Configure and build ------------------------------------------------------
TORCH_PREFIX=$("$VENV_PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
GEN=()
[[ -f build/CMakeCache.txt ]] || { command -v ninja >/dev/null && GEN=(-G Ninja); }
# ccache keyed on paths relative to the checkout: a fresh clone elsewhere (CI) or
# a git worktree reuses the objects this machine already compiled.
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
cmake -S . -B build "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DPT2SERVE_MODEL_DIR="$MODEL_DIR" -DPT2SERVE_PLAIN_DIR="$PLAIN_DIR" -DPT2SERVE_PYTHON="$VENV_PY" \
  >/dev/null
log "building"
cmake --build build --parallel "${PT2SERVE_BUILD_JOBS:-$(nproc)}" >&2

cat > build/env.sh <<ENV
export PT2SERVE_ROOT="$ROOT"
export PT2SERVE_MODEL_DIR="$MODEL_DIR"
export PT2SERVE_BUILD_DIR="$ROOT/build"
export PT2SERVE_FIXTURE_DIR="$ROOT/build/fixtures"
export PT2SERVE_CHECKOV="$CHECKOV_VENV/bin/checkov"
export PT2SERVE_PLAIN_DIR="$PLAIN_DIR"
export PATH="$ROOT/.venv/bin:$ROOT/build/server:$ROOT/build/tools/pt2ctl:\$PATH"
ENV
log "ready (models: $MODEL_DIR)"
