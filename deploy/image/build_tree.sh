# Sourced by build.sh and smoke_test.sh: what an image is built from, read off a configured
# build tree's CMake cache, so a second tree (build-cuda, against a CUDA torch in another venv)
# needs no env.sh of its own.
#   build_tree_vars BUILD ROOT  sets PYTHON (the Python whose torch the tree links; ROOT/.venv
#                               when the cache names none) and MODEL_DIR (the zoo export with the
#                               demo model mlp.pt2, exported by that torch).
build_tree_vars() {
  local build=$1 root=$2
  cache_value() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" 2>/dev/null; }
  PYTHON=$(cache_value PT2SERVE_PYTHON)
  [[ $PYTHON == /* && -x $PYTHON ]] || PYTHON=$root/.venv/bin/python
  MODEL_DIR=$(cache_value PT2SERVE_MODEL_DIR)
  if [[ ! -f $MODEL_DIR/mlp.pt2 ]]; then
    echo "no demo model: PT2SERVE_MODEL_DIR '$MODEL_DIR' in $build/CMakeCache.txt has no mlp.pt2 (scripts/setup.sh)" >&2
    return 2
  fi
}
