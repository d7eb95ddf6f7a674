#!/usr/bin/env bash
# Builds the pt2serve OCI image WITHOUT any container registry or daemon:
#
#   1. a minimal Debian bookworm runtime root filesystem (mmdebstrap --variant=extract: only the
#      shared-library packages pt2serve and pt2ctl link, found with ldd + dpkg -S; no shell,
#      no package manager, docs/man/locales excluded),
#   2. pt2serve + pt2ctl + the LibTorch libraries they need (/usr/lib/pt2serve), the demo model
#      (/usr/share/pt2serve/models) and a default config (/etc/pt2serve/config.yaml),
#   3. an OCI image layout (umoci: one layer, UID/GID 65532, OCI labels, entrypoint
#      `pt2serve --config /etc/pt2serve/config.yaml`), and
#   4. a docker-archive (skopeo) that `docker load`, `podman load` and `ctr import` accept,
#   5. optionally (--buildah) the same image again from deploy/image/Containerfile, as a check.
#
# Usage: deploy/image/build.sh [--variant cpu|cuda] [--build-dir build] [--out build/image]
#                              [--tag TAG] [--buildah]
#   cpu   the default: the LibTorch libraries ldd resolves for this build (torch CPU wheel).
#   cuda  the same recipe for a build tree configured against a CUDA torch wheel (docs/deploy.md:
#         build-cuda): every library of torch/lib and of the nvidia-* wheels is copied (CUDA
#         loads several with dlopen); torch's Python is read off BUILD/CMakeCache.txt.
# Needs root (mmdebstrap root mode), the Debian packages mmdebstrap umoci skopeo (buildah for
# --buildah), and a built tree (scripts/setup.sh). Prints the image size and the time taken.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VARIANT=cpu BUILD=build OUT= TAG= BUILDAH=0
while (($#)); do
  case $1 in
    --variant) VARIANT=$2; shift 2 ;;
    --build-dir) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --buildah) BUILDAH=1; shift ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $VARIANT == cpu || $VARIANT == cuda ]] || { echo "build.sh: --variant cpu|cuda" >&2; exit 2; }
BUILD=$(realpath "$BUILD")
OUT=$(realpath -m "${OUT:-$BUILD/image}")
VERSION=$(sed -n 's/.*kVersion\[\] = "\(.*\)";/\1/p' server/version.h)
SUFFIX=""
[[ $VARIANT == cuda ]] && SUFFIX=-cuda
TAG=${TAG:-$VERSION$SUFFIX}
log() { echo "[image] $*" >&2; }
for tool in mmdebstrap umoci skopeo ldd dpkg; do
  command -v $tool >/dev/null || { echo "build.sh: '$tool' missing (apt-get install mmdebstrap umoci skopeo)" >&2; exit 2; }
done
# pt2serve-worker runs models with isolation: process; the daemon finds it next to itself.
BINARIES=("$BUILD/server/pt2serve" "$BUILD/server/pt2serve-worker" "$BUILD/tools/pt2ctl/pt2ctl")
for b in "${BINARIES[@]}"; do [[ -x $b ]] || { echo "build.sh: $b not built" >&2; exit 2; }; done
# The torch the tree links (its libraries go into the image) and the demo model.
source deploy/image/build_tree.sh
build_tree_vars "$BUILD" "$ROOT" || exit 2
START=$(date +%s.%N)

rm -rf "$OUT"
mkdir -p "$OUT"
ROOTFS=$OUT/rootfs

# --- which Debian packages and which LibTorch libraries the binaries need --------------
TORCH_LIB=$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')
declare -A PACKAGES=() TORCH_LIBS=()
# cpu: the LibTorch libraries ldd resolves for the binaries. cuda: also every shared library of
# torch/lib (but the Python bindings) and of the nvidia-* wheels torch depends on: CUDA, cuDNN,
# NVRTC and others load parts of themselves with dlopen, which ldd cannot see. libcuda.so.1
# (the driver) is not among them: the node's NVIDIA container toolkit mounts it at run time.
EXTRA_LIBS=()
if [[ $VARIANT == cuda ]]; then
  "$PYTHON" -c 'import torch, sys; sys.exit(torch.version.cuda is None)' \
    || { echo "build.sh: --variant cuda, but the torch of $BUILD ($PYTHON) is a CPU build" >&2; exit 2; }
  for f in "$TORCH_LIB"/*.so* "$(dirname "$(dirname "$TORCH_LIB")")"/nvidia/*/lib/*.so*; do
    case $(basename "$f") in libtorch_python.so|libshm.so) continue ;; esac
    EXTRA_LIBS+=("$f")
    TORCH_LIBS[$f]=1
  done
fi
while read -r lib path; do
  [[ -n $path && -e $path ]] || continue
  real=$(realpath "$path")
  if [[ $real == "$(realpath "$TORCH_LIB")"/* || $real == */site-packages/* ]]; then
    TORCH_LIBS[$path]=1
    continue
  fi
  pkg=
  for candidate in "$path" "$real" "${real#/usr}" "/usr${real}"; do
    pkg=$(dpkg -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1) && [[ -n $pkg ]] && break
  done
  [[ -n $pkg ]] || { echo "build.sh: no Debian package owns $path ($lib)" >&2; exit 1; }
  PACKAGES[$pkg]=1
done < <(for b in "${BINARIES[@]}" "${EXTRA_LIBS[@]}"; do ldd "$b" | awk '/=>/ {print $1, $3}'; done | sort -u)
log "runtime packages: ${!PACKAGES[*]}"

# --- 1. root filesystem ------------------------------------------------------------------
log "mmdebstrap bookworm (variant extract)"
mmdebstrap --quiet --variant=extract --mode=root --format=directory \
  --include="$(IFS=,; echo "${!PACKAGES[*]}")" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  bookworm "$ROOTFS" >&2
# extract leaves apt/dpkg state behind; nothing at run time reads it.
rm -rf "$ROOTFS"/var/cache/apt "$ROOTFS"/var/lib/apt "$ROOTFS"/var/lib/dpkg "$ROOTFS"/var/log/*

# --- 2. pt2serve, its LibTorch libraries, the demo model, users, config --------------------
install -D -m 0755 "$BUILD/server/pt2serve" "$ROOTFS/usr/bin/pt2serve"
install -D -m 0755 "$BUILD/server/pt2serve-worker" "$ROOTFS/usr/bin/pt2serve-worker"
install -D -m 0755 "$BUILD/tools/pt2ctl/pt2ctl" "$ROOTFS/usr/bin/pt2ctl"
strip --strip-unneeded "$ROOTFS/usr/bin/pt2serve" "$ROOTFS/usr/bin/pt2serve-worker" \
  "$ROOTFS/usr/bin/pt2ctl"
mkdir -p "$ROOTFS/usr/lib/pt2serve"
for lib in "${!TORCH_LIBS[@]}"; do cp -L "$lib" "$ROOTFS/usr/lib/pt2serve/"; done
echo /usr/lib/pt2serve > "$ROOTFS/etc/ld.so.conf.d/pt2serve.conf"
echo 'include /etc/ld.so.conf.d/*.conf' > "$ROOTFS/etc/ld.so.conf"
ldconfig -r "$ROOTFS"
install -D -m 0644 "$MODEL_DIR/mlp.pt2" "$ROOTFS/usr/share/pt2serve/models/mlp.pt2"
install -D -m 0644 "$MODEL_DIR/mlp.weights.safetensors" \
  "$ROOTFS/usr/share/pt2serve/models/mlp.weights.safetensors"
install -D -m 0644 deploy/image/config.yaml "$ROOTFS/etc/pt2serve/config.yaml"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\npt2serve:x:65532:65532:pt2serve:/nonexistent:/usr/sbin/nologin\n' \
  > "$ROOTFS/etc/passwd"
printf 'root:x:0:\npt2serve:x:65532:\n' > "$ROOTFS/etc/group"
mkdir -p "$ROOTFS/tmp" && chmod 1777 "$ROOTFS/tmp"
# Reproducible file times (SOURCE_DATE_EPOCH: the last commit).
EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
find "$ROOTFS" -exec touch -h -d "@$EPOCH" {} +
if [[ -e $ROOTFS/bin/sh || -e $ROOTFS/usr/bin/sh ]]; then log "note: the rootfs has a shell"; fi

# --- 3. OCI layout (umoci) and 4. docker-archive (skopeo) ----------------------------------
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
LABELS=(
  "org.opencontainers.image.title=pt2serve"
  "org.opencontainers.image.description=Inference server for PyTorch AOTInductor packages ($VARIANT)"
  "org.opencontainers.image.version=$VERSION"
  "org.opencontainers.image.revision=$REVISION"
  "org.opencontainers.image.created=$CREATED"
  "org.opencontainers.image.source=https://pt2serve.invalid/src"
  "org.opencontainers.image.base.name=debian:bookworm (mmdebstrap extract)"
)
IMAGE=$OUT/oci
umoci init --layout "$IMAGE"
umoci new --image "$IMAGE:$TAG"
umoci unpack --image "$IMAGE:$TAG" "$OUT/empty-bundle" >/dev/null
rm -rf "$OUT/empty-bundle/rootfs"
mv "$ROOTFS" "$OUT/empty-bundle/rootfs"
umoci repack --image "$IMAGE:$TAG" "$OUT/empty-bundle"
mv "$OUT/empty-bundle/rootfs" "$ROOTFS"
rm -rf "$OUT/empty-bundle"
config_args=(--image "$IMAGE:$TAG" --config.user 65532:65532 --config.workingdir /
  --config.entrypoint /usr/bin/pt2serve --config.cmd --config --config.cmd /etc/pt2serve/config.yaml
  --config.env TMPDIR=/tmp --config.env PATH=/usr/bin
  --config.exposedports 8001/tcp --config.exposedports 8002/tcp --config.exposedports 8003/tcp
  --config.volume /tmp --author "pt2serve developers" --created "$CREATED"
  --history.created_by "deploy/image/build.sh --variant $VARIANT")
for l in "${LABELS[@]}"; do config_args+=(--config.label "$l" --manifest.annotation "$l"); done
umoci config "${config_args[@]}"
umoci gc --layout "$IMAGE"
ARCHIVE=$OUT/pt2serve-$TAG.docker.tar
skopeo copy --quiet "oci:$IMAGE:$TAG" "docker-archive:$ARCHIVE:pt2serve:$TAG"

# --- 5. the Containerfile route, checked with buildah --------------------------------------
if ((BUILDAH)); then
  command -v buildah >/dev/null || { echo "build.sh: buildah missing" >&2; exit 2; }
  tar -C "$ROOTFS" --numeric-owner -cf "$OUT/rootfs.tar" .
  cp deploy/image/Containerfile "$OUT/Containerfile"
  label_args=()
  for l in "${LABELS[@]}"; do label_args+=(--label "$l"); done
  buildah --storage-driver vfs bud --quiet --isolation chroot "${label_args[@]}" \
    --build-arg VARIANT="$VARIANT" -t "localhost/pt2serve:$TAG-buildah" -f "$OUT/Containerfile" "$OUT" >&2
  buildah --storage-driver vfs push --quiet "localhost/pt2serve:$TAG-buildah" \
    "oci-archive:$OUT/pt2serve-$TAG.buildah.oci.tar" >&2
  buildah --storage-driver vfs rmi "localhost/pt2serve:$TAG-buildah" >/dev/null
  rm -f "$OUT/rootfs.tar"
fi

END=$(date +%s.%N)
ROOTFS_MB=$(du -sm "$ROOTFS" | cut -f1)
ARCHIVE_MB=$(( $(stat -c %s "$ARCHIVE") / 1048576 ))
LAYER_MB=$(( $(find "$IMAGE/blobs" -type f -size +1M -printf '%s\n' | sort -n | tail -n1) / 1048576 ))
printf '[image] pt2serve:%s (%s): rootfs %s MB, compressed layer %s MB, docker-archive %s MB, built in %.0f s\n' \
  "$TAG" "$VARIANT" "$ROOTFS_MB" "$LAYER_MB" "$ARCHIVE_MB" "$(echo "$END - $START" | bc)" >&2
echo "$IMAGE:$TAG"
