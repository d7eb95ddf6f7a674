#!/usr/bin/env bash
# One command for the image: installs the Debian tools it needs if missing, builds the image
# (deploy/image/build.sh, arguments passed through) and smoke-tests it with runc
# (deploy/image/smoke_test.sh). scripts/test.sh runs it for the CPU image (docs/deploy.md has
# the measured times). Needs root and a built tree (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools=(mmdebstrap umoci skopeo runc bc)
[[ " $* " == *" --buildah "* ]] && tools+=(buildah)
missing=()
for pkg in "${tools[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "[image] installing Debian packages: ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
start=$(date +%s)
image=$(deploy/image/build.sh "$@" | tail -n 1)
build_dir=build
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  [[ ${args[i]} == --build-dir ]] && build_dir=${args[i + 1]}
done
deploy/image/smoke_test.sh --build-dir "$build_dir" "$image"
echo "[image] build + smoke test: $(( $(date +%s) - start )) s" >&2
