#!/usr/bin/env bash
# Prepares the build tree the CUDA image is made from (build.sh --variant cuda --build-dir DIR):
#   1. a venv with a CUDA build of torch (pip takes torch 2.14.1+cu130 and its nvidia-* wheels
#      from this machine's disk; about 5.5 GB),
#   2. the demo model exported by that torch (mlp, CPU package: the image must start without a
#      GPU; GPU packages are the operator's, exported on hardware like the nodes'),
#   3. pt2serve, pt2serve-worker and pt2ctl configured and built against it. LibTorch's CMake
#      config needs a CUDA toolkit (nvcc, cudart headers): CUDA_HOME, /usr/local/cuda by default.
# Usage: deploy/image/cuda_tree.sh [--build-dir build-cuda] [--venv .venv-cuda] [--torch 2.14.1]
# Idempotent: steps whose result exists are quick. Prints the build tree's path last.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=build-cuda VENV=.venv-cuda TORCH=2.14.1
while (($#)); do
  case $1 in
    --build-dir) BUILD=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --torch) TORCH=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "cuda_tree.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
log() { echo "[cuda-tree] $*" >&2; }
CUDA_HOME=$(realpath "${CUDA_HOME:-/usr/local/cuda}")  # resolved: the CMake cache keeps one path
[[ -x $CUDA_HOME/bin/nvcc ]] || { echo "cuda_tree.sh: no nvcc in CUDA_HOME=$CUDA_HOME" >&2; exit 2; }
START=$(date +%s)

[[ -x $VENV/bin/python ]] || { log "creating $VENV"; "${PT2SERVE_BASE_PYTHON:-python3}" -m venv "$VENV"; }
# Not realpath: that resolves the venv's python symlink to the base interpreter.
PY=$(cd "$VENV" && pwd)/bin/python
"$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' \
  || { echo "cuda_tree.sh: $VENV is not a virtual environment" >&2; exit 2; }
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
  log "installing torch==$TORCH (CUDA build) into $VENV"
  "$PY" -m pip install -q "torch==$TORCH" numpy safetensors >&2
fi
CUDA_VERSION=$("$PY" -c 'import torch; print(torch.version.cuda or "")')
[[ -n $CUDA_VERSION ]] || { echo "cuda_tree.sh: torch $TORCH in $VENV is a CPU build" >&2; exit 2; }
log "torch $("$PY" -c 'import torch; print(torch.__version__)') (CUDA $CUDA_VERSION), nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"

MODEL_DIR=$("$PY" tools/export/export_model.py zoo --device cpu --models mlp | tail -n 1)
[[ -f $MODEL_DIR/mlp.pt2 ]] || { echo "cuda_tree.sh: demo model export failed" >&2; exit 1; }

GEN=()
[[ -f $BUILD/CMakeCache.txt ]] || { command -v ninja >/dev/null && GEN=(-G Ninja); }
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
  -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
  -DPT2SERVE_MODEL_DIR="$MODEL_DIR" -DPT2SERVE_PYTHON="$PY" >/dev/null
log "building pt2serve pt2serve-worker pt2ctl in $BUILD"
cmake --build "$BUILD" --parallel "${PT2SERVE_BUILD_JOBS:-$(nproc)}" \
  --target pt2serve pt2serve-worker pt2ctl >&2
readelf -d "$BUILD/server/pt2serve" | grep -q 'NEEDED.*libtorch_cuda.so' \
  || { echo "cuda_tree.sh: $BUILD/server/pt2serve does not link libtorch_cuda.so" >&2; exit 1; }
log "ready in $(( $(date +%s) - START )) s: deploy/image/check.sh --variant cuda --build-dir $BUILD"
realpath "$BUILD"
