#!/usr/bin/env bash
# Provides Triton's perf_analyzer (a C++ binary) as .venv/bin/perf_analyzer for
# tests/integration/test_perf_analyzer.py. Called by scripts/setup.sh after the venv step.
#
# PyPI's `perf-analyzer` is a placeholder and current tritonclient wheels carry no binary, but
# the manylinux x86_64 wheel of tritonclient 2.41.0 has one at
# tritonclient-2.41.0.data/data/bin/perf_analyzer. It needs libb64.so.0d (Debian libb64-0d)
# and libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12) even against a CPU-only server.
#
# Only the binary and libcudart.so.12 are extracted (python zipfile) into
#   ${PT2SERVE_CACHE_ROOT:-$HOME/.cache/pt2serve}/perf_analyzer-2.41.0/{bin,lib}/
# tritonclient 2.41 is NOT installed into .venv (that one has tritonclient 2.73). The wrapper
# .venv/bin/perf_analyzer sets LD_LIBRARY_PATH to the cached lib dir and execs the binary.
#
# Idempotent: with everything present it touches no network and takes well under a second.
# Never fails setup: any failure (no network, no apt, other arch) prints a warning, removes the
# wrapper, and exits 0; the test then skips with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { echo "[perf_analyzer] $*" >&2; }

TRITONCLIENT_VERSION=2.41.0
# perf_analyzer 2.41.0 (Triton 23.12) was built against CUDA 12.3; any libcudart.so.12 works.
CUDART_VERSION=12.3.101
WHEEL_PLATFORM=manylinux1_x86_64   # both wheels above exist with this tag (x86_64 only)

CACHE=${PT2SERVE_CACHE_ROOT:-$HOME/.cache/pt2serve}/perf_analyzer-$TRITONCLIENT_VERSION
BIN=$CACHE/bin/perf_analyzer
LIBDIR=$CACHE/lib
CUDART=$LIBDIR/libcudart.so.12
VENV_PY=$ROOT/.venv/bin/python
WRAPPER=$ROOT/.venv/bin/perf_analyzer
APT_PKG=libb64-0d

give_up() {
  log "WARNING: $*"
  log "WARNING: perf_analyzer not installed; tests/integration/test_perf_analyzer.py will skip"
  rm -f "$WRAPPER"
  exit 0
}

wrapper_text() {
  cat <<EOF
#!/bin/sh
# Written by scripts/get_perf_analyzer.sh: perf_analyzer from the tritonclient $TRITONCLIENT_VERSION
# wheel, with libcudart.so.12 (nvidia-cuda-runtime-cu12 $CUDART_VERSION) from the cache.
LD_LIBRARY_PATH="$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$BIN" "\$@"
EOF
}

has_apt_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

# --- fast path: everything already there (no network, no subprocess beyond dpkg-query) ---------
if [[ -x $BIN && -f $CUDART && -x $WRAPPER ]] && has_apt_pkg "$APT_PKG" \
   && [[ "$(cat "$WRAPPER")" == "$(wrapper_text)" ]]; then
  exit 0
fi

[[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] \
  || give_up "only Linux x86_64 is supported (this is $(uname -s) $(uname -m))"
[[ -x $VENV_PY ]] || give_up "no $VENV_PY (run scripts/setup.sh)"

# --- libb64-0d (Debian) -------------------------------------------------------------------------
if ! has_apt_pkg "$APT_PKG"; then
  log "installing Debian package $APT_PKG"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -q --no-install-recommends "$APT_PKG" >&2; then
    # The package lists may be stale or missing: refresh once and retry.
    { $SUDO apt-get update -q >&2 \
      && $SUDO apt-get install -y -q --no-install-recommends "$APT_PKG" >&2; } \
      || give_up "apt-get install $APT_PKG failed"
  fi
fi

# --- perf_analyzer binary and libcudart.so.12 (PyPI wheels, extracted into the cache) -----------
# extract WHEEL MEMBER DEST [MODE]: one member of a wheel, written atomically.
extract() {
  "$VENV_PY" - "$@" <<'PY'
import os, sys, zipfile
wheel, member, dest = sys.argv[1:4]
mode = int(sys.argv[4], 8) if len(sys.argv) > 4 else 0o644
os.makedirs(os.path.dirname(dest), exist_ok=True)
tmp = f"{dest}.tmp{os.getpid()}"
with zipfile.ZipFile(wheel) as z, open(tmp, "wb") as f:
    f.write(z.read(member))
os.chmod(tmp, mode)
os.replace(tmp, dest)
PY
}

# fetch SPEC: downloads one wheel (no deps, binary, manylinux x86_64) into its own dir under
# $TMP and prints the wheel's path.
fetch() {
  local dir out
  dir=$(mktemp -d "$TMP/wheel.XXXX")
  # (pip warns about the file:// extra indexes that lack the project; drop that noise)
  if ! out=$("$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --retries 2 --timeout 30 \
               --platform "$WHEEL_PLATFORM" --dest "$dir" "$1" 2>&1); then
    echo "$out" | grep -v "is neither a file nor a directory" | tail -n 5 >&2
    return 1
  fi
  ls -1 "$dir"/*.whl 2>/dev/null | head -n 1
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [[ ! -x $BIN ]]; then
  log "downloading tritonclient==$TRITONCLIENT_VERSION ($WHEEL_PLATFORM wheel) for its perf_analyzer"
  whl=$(fetch "tritonclient==$TRITONCLIENT_VERSION") && [[ -n $whl ]] \
    || give_up "pip download tritonclient==$TRITONCLIENT_VERSION failed (no network?)"
  log "  $(basename "$whl"): $(du -k "$whl" | cut -f1) KiB"
  extract "$whl" "tritonclient-$TRITONCLIENT_VERSION.data/data/bin/perf_analyzer" "$BIN" 755 \
    || give_up "no perf_analyzer in $(basename "$whl")"
fi

if [[ ! -f $CUDART ]]; then
  log "downloading nvidia-cuda-runtime-cu12==$CUDART_VERSION for libcudart.so.12"
  whl=$(fetch "nvidia-cuda-runtime-cu12==$CUDART_VERSION") && [[ -n $whl ]] \
    || give_up "pip download nvidia-cuda-runtime-cu12==$CUDART_VERSION failed (no network?)"
  log "  $(basename "$whl"): $(du -k "$whl" | cut -f1) KiB"
  extract "$whl" "nvidia/cuda_runtime/lib/libcudart.so.12" "$CUDART" 644 \
    || give_up "no libcudart.so.12 in $(basename "$whl")"
fi

# --- wrapper, written only once the binary is known to start -----------------------------------
wrapper_text > "$WRAPPER.tmp"
chmod 755 "$WRAPPER.tmp"
if ! out=$("$WRAPPER.tmp" --version 2>&1); then
  rm -f "$WRAPPER.tmp"
  give_up "$BIN does not start: $(echo "$out" | head -n 3)"
fi
mv -f "$WRAPPER.tmp" "$WRAPPER"
log "installed $WRAPPER ($(echo "$out" | head -n 1))"
exit 0
