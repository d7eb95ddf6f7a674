#!/usr/bin/env bash
# Proof on the CUDA host (issue 5): builds the whole project with that host's
# torch, exports the zoo as CPU and CUDA packages, runs the full test suite
# plus the CUDA tests, and the benchmarks. Logs and results go to $OUT.
#
#   scripts/cuda_host_check.sh build   # unpack deps, export zoo, configure, build
#   scripts/cuda_host_check.sh test    # ctest, cuda_test, pytest (builds first if needed)
#   scripts/cuda_host_check.sh bench   # tools/bench/run_benchmarks.sh on the CUDA packages
#   scripts/cuda_host_check.sh all
#   scripts/cuda_host_check.sh latency   # 1-stream latency and its floors, CPU and CUDA mlp
#   scripts/cuda_host_check.sh quick-latency  # build, ctest + cuda_test, latency (< 10 min)
#   scripts/cuda_host_check.sh containment    # build, ctest + cuda_test, isolation cost
#   scripts/cuda_host_check.sh staging  # build, cuda_test, the stale-read test without the
#                                       # staging sync (must fail), upload benchmarks
#   scripts/cuda_host_check.sh upload   # build, upload benchmarks (big_mlp, huge_mlp) and
#                                       # the plain pinned/pageable H2D copy bandwidth
#   scripts/cuda_host_check.sh peers    # build; batching and the grpcio peer side by side
#                                       # (PEERS_MID=1: the mid-size tools/bench/mid_mlp.py)
#                                       # (tools/bench/peers/run_peers.sh --device cuda); needs
#                                       # perf_analyzer in .pa/ (bin/, lib/: `fetch` fills it)
#   scripts/cuda_host_check.sh pytriton-wheels  # install .ptw-a/ or .ptw-b/ (one call each,
#                                       # before `peers`; `fetch-pytriton` fills them here)
#   scripts/cuda_host_check.sh soak     # build; tools/bench/soak.py on the CUDA zoo
#                                       # (SOAK_CYCLES, default 1000; SOAK_MODELS)
#   scripts/cuda_host_check.sh memory   # build; weights memory accounting of big_mlp on CUDA
#                                       # (pt2ctl weights status after each step, as JSON)
#   scripts/cuda_host_check.sh sdk      # build; Python SDK push --swap of big_mlp
#                                       # (tools/bench/sdk_push_bench.py; ZOO_MODELS=mlp is enough;
#                                       # SDK_VARIANTS="--chunk-mib 2;--chunk-mib 0.5": several runs)
#
# The host has no network and no gRPC/protobuf/spdlog/... C++ libraries: they
# travel as Debian packages in .debs/ (see shared notes cuda-host.md; fetch
# them with `scripts/cuda_host_check.sh fetch` on a dev machine) and are
# unpacked into a sysroot. Python packages the host lacks travel as wheels in
# .whl/ and are installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAGE=${1:-all}
OUT=${OUT:-$ROOT/cuda-results}
SYSROOT=/tmp/pt2serve-sysroot
BUILD=/tmp/pt2serve-build
MODELS=/tmp/pt2serve-models
LOGS=/tmp/pt2serve-logs  # bulky logs stay on the host; failures are printed
mkdir -p "$OUT" "$LOGS"
log() { echo "[cuda-host $(date +%T)] $*" | tee -a "$OUT/steps.log"; }

if [[ $STAGE == fetch ]]; then  # on a dev machine with apt: refresh .debs/ and .whl/
  mkdir -p .debs && (cd .debs && apt-get download libgrpc++-dev libgrpc++1.51 libgrpc29 \
    libgrpc-dev libprotobuf-dev libprotobuf32 libprotoc32 protobuf-compiler \
    protobuf-compiler-grpc libabsl-dev libabsl20220623 libre2-9 libre2-dev libc-ares2 \
    libc-ares-dev libupb-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libtbb-dev libtbb12 libtbbbind-2-5 \
    libtbbmalloc2 prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
    libprometheus-cpp-push1.0 libcivetweb1 libcivetweb-dev libyaml-cpp-dev libyaml-cpp0.7 catch2 \
    libssl3 libssl-dev zlib1g-dev nlohmann-json3-dev libcli11-dev libcurl4-openssl-dev libcurl4 civetweb \
    libzip-dev libzip4)
  mkdir -p .whl && for spec in grpcio==1.85.3 grpcio-health-checking==1.81.1 \
      grpcio-reflection==1.81.1 grpcio-tools==1.81.1 protobuf==6.33.6 python-rapidjson==1.25 \
      tritonclient==2.73.0 safetensors==0.7.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d .whl "$spec"
  done
  # perf_analyzer (see scripts/get_perf_analyzer.sh) and the libraries it needs beside it.
  pa=${PT2SERVE_CACHE_ROOT:-$HOME/.cache/pt2serve}/perf_analyzer-2.41.0
  if [[ -x $pa/bin/perf_analyzer ]]; then
    mkdir -p .pa/bin .pa/lib && cp "$pa/bin/perf_analyzer" .pa/bin/ && cp -L "$pa"/lib/* .pa/lib/
    cp -L /usr/lib/x86_64-linux-gnu/libb64.so.0d .pa/lib/ 2>/dev/null || true
  fi
  exit 0
fi

# PyTriton, the Triton peer of issue 10, does not fit into one call's carry next to the
# build's packages (nvidia-pytriton alone is a 55 MB wheel; a call carries 64 MiB). So its
# wheels travel in two calls of their own, `pytriton-wheels` with carry [".ptw-a"] and then
# with [".ptw-b"], each installing into the host's python; a `peers` call right after, on the
# same warm machine, then runs the pytriton rows. PyTriton 0.7.0 needs numpy < 2 in that
# python (with numpy 2 its Python backend returns empty outputs: rehearsed on the dev VM), and
# tritonclient needs ml-dtypes <= 0.5.4, so .ptw-b carries both (the machine is discarded after).
PTW_A=(nvidia-pytriton==0.7.0)
PTW_B=(pyzmq==27.3.0 sh==2.4.0 gevent==26.9.0 geventhttpclient==2.6.1 greenlet==3.5.6
       zope.event==6.1 zope.interface==8.2 brotli==1.2.1 importlib_metadata==10.2.0
       tritonclient==2.73.0 python-rapidjson==1.25 numpy==1.26.4 ml-dtypes==0.5.4)
if [[ $STAGE == fetch-pytriton ]]; then  # on a dev machine: fill .ptw-a/ and .ptw-b/
  fetch_into() {
    local dir=$1; shift
    mkdir -p "$dir"
    for spec in "$@"; do
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d "$dir" "$spec" || exit 1
    done
  }
  fetch_into .ptw-a "${PTW_A[@]}"
  fetch_into .ptw-b "${PTW_B[@]}"
  du -sh .ptw-a .ptw-b
  exit 0
fi
if [[ $STAGE == pytriton-wheels ]]; then  # on the CUDA host, once per carried folder
  py=$(command -v "${PT2SERVE_PYTHON:-python3}")
  for dir in .ptw-a .ptw-b; do
    if ls "$dir"/*.whl >/dev/null 2>&1; then
      log "installing $(ls "$dir"/*.whl | wc -l) wheels from $dir into $($py -c 'import sys;print(sys.prefix)')"
      $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$dir"/*.whl \
        2>&1 | grep -v WARNING | tail -n 5 | tee -a "$OUT/steps.log"
    fi
  done
  $py -c 'import numpy, pytriton.triton, zmq, tritonclient.http; print("pytriton ready, numpy", numpy.__version__)' \
    2>&1 | tail -n 2 | tee -a "$OUT/steps.log"
  exit 0
fi

# --- environment --------------------------------------------------------------
export PATH=$SYSROOT/usr/bin:$PATH
export LD_LIBRARY_PATH=$SYSROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# gRPC's CMake config finds re2 through pkg-config: point it into the sysroot.
export PKG_CONFIG_SYSROOT_DIR=$SYSROOT
export PKG_CONFIG_PATH=$SYSROOT/usr/lib/x86_64-linux-gnu/pkgconfig:$SYSROOT/usr/share/pkgconfig
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
unset CXX  # Inductor reads CXX as its compiler command
PY=$(command -v "${PT2SERVE_PYTHON:-python3}")
if [[ ! -d /tmp/site ]] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOGS/pip.log" 2>&1 || log "wheel install failed (pip.log)"
fi
[[ -d /tmp/site ]] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PT2SERVE_CACHE=$MODELS

do_build() {
  log "host: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
  $PY -c 'import torch,sys;print("python",sys.version.split()[0],"torch",torch.__version__,"cuda",torch.version.cuda,"gpus",torch.cuda.device_count())' \
    2>&1 | tee -a "$OUT/steps.log"
  if [[ ! -f $SYSROOT/.unpacked-$(ls .debs | md5sum | cut -c1-8) ]]; then
    log "unpacking $(ls .debs/*.deb | wc -l) Debian packages into $SYSROOT"
    for f in .debs/*.deb; do dpkg -x "$f" "$SYSROOT"; done
    touch "$SYSROOT/.unpacked-$(ls .debs | md5sum | cut -c1-8)"
  fi
  log "exporting the zoo (CPU and CUDA) in the background"
  local subset=()
  [[ -n ${ZOO_MODELS:-} ]] && subset=(--models "$ZOO_MODELS")  # e.g. ZOO_MODELS=mlp,tiny_lm
  ($PY tools/export/export_model.py zoo --device cpu "${subset[@]}" >"$LOGS/export-cpu.log" 2>&1; echo $? >"$LOGS/export-cpu.rc") &
  ($PY tools/export/export_model.py zoo --device cuda "${subset[@]}" >"$LOGS/export-cuda.log" 2>&1; echo $? >"$LOGS/export-cuda.rc") &
  local torch_prefix
  torch_prefix=$($PY -c 'import torch;print(torch.utils.cmake_prefix_path)')
  wait
  CPU_DIR=$(tail -n 1 "$LOGS/export-cpu.log")
  CUDA_DIR=$(tail -n 1 "$LOGS/export-cuda.log")
  log "export rc cpu=$(cat "$LOGS/export-cpu.rc") cuda=$(cat "$LOGS/export-cuda.rc"): $CPU_DIR $CUDA_DIR"
  for dev in cpu cuda; do
    if [[ $(cat "$LOGS/export-$dev.rc") != 0 ]]; then
      grep -v "Warning\|return cls" "$LOGS/export-$dev.log" | tail -n 25 | tee -a "$OUT/steps.log"
      # Export the rest one model at a time, so one model's failure costs only that model.
      for m in mlp cnn two_io tiny_lm checked half; do
        $PY tools/export/export_model.py zoo --device "$dev" --models "$m" >>"$LOGS/export-$dev.log" 2>&1 \
          || log "export of $m for $dev FAILED"
      done
      tail -n 1 "$LOGS/export-$dev.log" > "$LOGS/export-$dev.dir"
    fi
  done
  log "configuring"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$SYSROOT/usr;$torch_prefix" \
    -DPT2SERVE_MODEL_DIR="$CPU_DIR" -DPT2SERVE_PYTHON="$PY" >"$LOGS/configure.log" 2>&1 \
    || { log "configure FAILED"; tail -n 40 "$LOGS/configure.log"; return 1; }
  log "building"
  cmake --build "$BUILD" -j "$(nproc)" >"$LOGS/build.log" 2>&1 \
    || { log "build FAILED"; grep -E "error|Error" "$LOGS/build.log" | head -40; return 1; }
  log "build done"
}

model_dirs() {
  CPU_DIR=$(tail -n 1 "$LOGS/export-cpu.log")
  CUDA_DIR=$(tail -n 1 "$LOGS/export-cuda.log")
  [[ -d $CUDA_DIR ]] || CUDA_DIR=$(ls -d "$MODELS"/*-cuda 2>/dev/null | head -n 1)
  [[ -d $CPU_DIR ]] || CPU_DIR=$(ls -d "$MODELS"/*[0-9a-f] 2>/dev/null | head -n 1)
}

do_test() {
  [[ -x $BUILD/server/pt2serve ]] || do_build || return 1
  model_dirs
  local status=0
  if [[ -z ${PYTEST_ONLY:-} ]]; then
  log "ctest (the CPU suite, packages compiled by this host's torch)"
  ctest --test-dir "$BUILD" --output-on-failure -j 8 --timeout 300 >"$OUT/ctest.log" 2>&1 || status=1
  tail -n 4 "$OUT/ctest.log" | tee -a "$OUT/steps.log"
  log "cuda_test"
  PT2SERVE_CUDA_MODEL_DIR=$CUDA_DIR timeout 150 "$BUILD/tests/cuda_test" -r compact >"$OUT/cuda_test.log" 2>&1 || status=1
  grep -E "Passed|Failed|passed all|failed|hot swap|skipped|warning" "$OUT/cuda_test.log" | tail -n 12 | tee -a "$OUT/steps.log"
  fi
  [[ -n ${SKIP_PYTEST:-} ]] && return $status
  log "pytest"
  PT2SERVE_MODEL_DIR=$CPU_DIR PT2SERVE_BUILD_DIR=$BUILD PT2SERVE_FIXTURE_DIR=$BUILD/fixtures \
    PATH=$BUILD/server:$BUILD/tools/pt2ctl:$PATH \
    timeout ${PT2SERVE_PYTEST_TIMEOUT:-400} $PY -m pytest -q -rfEs -p no:cacheprovider tests/python tests/integration tests/proto \
    >"$OUT/pytest.log" 2>&1 || status=1
  tail -n 15 "$OUT/pytest.log" | tee -a "$OUT/steps.log"
  grep -m 3 -B 2 -A 25 "^E " "$OUT/pytest.log" | head -n 90
  return $status
}

do_bench() {
  [[ -x $BUILD/server/pt2serve ]] || do_build || return 1
  model_dirs
  log "exporting big_mlp (~200 MB) for the upload benchmark"
  $PY tools/export/export_model.py zoo --device cuda --models big_mlp >"$LOGS/export-big.log" 2>&1 \
    || log "big_mlp export failed: $(tail -n 3 "$LOGS/export-big.log")"
  log "benchmarks on $CUDA_DIR"
  mkdir -p /tmp/pt2serve-bench
  timeout 330 tools/bench/run_benchmarks.sh /tmp/pt2serve-bench/benchmarks-cuda.md "$CUDA_DIR" \
    --build-dir "$BUILD" --streams 1,4,16 --seconds 2 ${PT2SERVE_BENCH_ARGS:-} >"$LOGS/bench.log" 2>&1
  local rc=$?
  cp /tmp/pt2serve-bench/benchmarks-cuda.md "$OUT/" 2>/dev/null
  tail -n 40 "$LOGS/bench.log"
  return $rc
}

# Upload+stage throughput only (issue 11): big_mlp (201 MB), then huge_mlp (2.1 GB) when
# time allows, both compiled for CUDA by this host's torch.
do_bench_upload() {
  model_dirs
  local rc=0 big=/tmp/pt2serve-big
  mkdir -p /tmp/pt2serve-bench "$big"
  log "exporting big_mlp for CUDA"
  $PY tools/export/export_model.py zoo --device cuda --models big_mlp >"$LOGS/export-big.log" 2>&1 \
    || log "big_mlp export failed: $(tail -n 3 "$LOGS/export-big.log")"
  log "upload benchmark big_mlp (201 MB)"
  timeout 150 tools/bench/run_benchmarks.sh /tmp/pt2serve-bench/upload-big.md "$CUDA_DIR" \
    --build-dir "$BUILD" --skip-pool --skip-grpc --skip-swap >"$LOGS/upload-big.log" 2>&1 || rc=1
  cp /tmp/pt2serve-bench/upload-big.md "$OUT/" 2>/dev/null
  grep -E "^\| |^- .*GB/s" /tmp/pt2serve-bench/upload-big.md | grep -i -E "push|upload|staging|stage|pinned|H2D|GB/s" \
    | head -n 20 | tee -a "$OUT/steps.log"
  if [[ -z ${SKIP_HUGE:-} ]]; then
    log "exporting huge_mlp (2.1 GB) for CUDA"
    (cd tools/bench && timeout 200 $PY ../export/export_model.py module --target huge_mlp:HugeMLP \
       --name huge_mlp --inputs x:float32:-1,4096 --outputs y --max-batch 8 --device cuda --out "$big") \
      >"$LOGS/export-huge.log" 2>&1 || log "huge_mlp export failed: $(tail -n 3 "$LOGS/export-huge.log")"
    if [[ -f $big/huge_mlp.pt2 ]]; then
      log "upload benchmark huge_mlp (2.1 GB)"
      timeout 200 tools/bench/run_benchmarks.sh /tmp/pt2serve-bench/upload-huge.md "$CUDA_DIR" \
        --build-dir "$BUILD" --big-dir "$big" --big-model huge_mlp --skip-pool --skip-grpc \
        --skip-swap >"$LOGS/upload-huge.log" 2>&1 || rc=1
      cp /tmp/pt2serve-bench/upload-huge.md "$OUT/" 2>/dev/null
      grep -E "^\| |^- .*GB/s" /tmp/pt2serve-bench/upload-huge.md | grep -i -E "push|upload|staging|stage|GB/s" \
        | head -n 20 | tee -a "$OUT/steps.log"
    fi
  fi
  return $rc
}

do_latency() {
  [[ -x $BUILD/server/pt2serve ]] || do_build || return 1
  model_dirs
  local rc=0 dir name
  mkdir -p /tmp/pt2serve-bench
  for dir in "$CPU_DIR" "$CUDA_DIR"; do
    name=latency-$([[ $dir == *-cuda ]] && echo cuda || echo cpu)
    log "latency and floors on $dir"
    timeout 200 tools/bench/run_benchmarks.sh "/tmp/pt2serve-bench/$name.md" "$dir" \
      --build-dir "$BUILD" --skip-pool --skip-swap --skip-upload --streams 1,4 --seconds 2 \
      --load-swaps 2 >"$LOGS/$name.log" 2>&1 || rc=1
    cp "/tmp/pt2serve-bench/$name.md" "$OUT/" 2>/dev/null
    grep -E "^\| (in-process|native|kserve|live|kserve-stream|tcp echo|unix echo|pipe echo|3) " \
      "/tmp/pt2serve-bench/$name.md" | tee -a "$OUT/steps.log"
  done
  return $rc
}

# Per-request cost of isolation: process (docs/containment.md), in-process
# Model::Infer, mlp and tiny_lm, CPU and CUDA packages.
do_containment_bench() {
  [[ -x $BUILD/server/pt2serve ]] || do_build || return 1
  model_dirs
  local rc=0 dir model isolation
  for dir in "$CPU_DIR" "$CUDA_DIR"; do
    for model in mlp tiny_lm; do
      for isolation in in_process process; do
        timeout 60 "$BUILD/tools/bench/inproc_bench" "$dir/$model.pt2" --runners 2 --batch 1 \
          --streams 1,4 --seconds 2 --warmup 0.5 --isolation "$isolation" \
          --label "$isolation$([[ $dir == *-cuda ]] && echo ' cuda')" --no-header \
          2>>"$LOGS/containment-bench.log" | tee -a "$OUT/containment-bench.md" || rc=1
      done
    done
  done
  return $rc
}

# Starts a daemon serving `name=package` with an admin token (/tmp/admin.token) and waits
# until the model answers `weights status`. Sets DAEMON_PID and ADMIN.
start_admin_daemon() {
  local spec=$1 name=${1%%=*}
  echo admintoken > /tmp/admin.token; chmod 600 /tmp/admin.token
  ADMIN=127.0.0.1:18102
  "$BUILD/server/pt2serve" -m "$spec" --inference-address 127.0.0.1:18101 \
    --admin-address $ADMIN --metrics-address '' --admin-token-file /tmp/admin.token \
    >"$LOGS/admin-daemon.log" 2>&1 &
  DAEMON_PID=$!
  for i in $(seq 300); do grep -q listening "$LOGS/admin-daemon.log" && break; sleep 0.2; done
  # "listening" comes before the model is READY: wait for weights status to answer.
  for i in $(seq 120); do
    "$BUILD/tools/pt2ctl/pt2ctl" --admin-address $ADMIN --token-file /tmp/admin.token \
      weights status "$name" >/dev/null 2>&1 && break
    sleep 0.5
  done
}

rc=0
case $STAGE in
  build) do_build || rc=1 ;;
  test) do_test || rc=1 ;;
  bench) do_bench || rc=1 ;;
  all) { do_build && do_test; } || rc=1; do_bench || rc=1 ;;
  quick-all)  # one command within the host's 10-minute limit: tests, then benches, then pytest
    do_build || rc=1
    if [[ $rc == 0 ]]; then
      SKIP_PYTEST=1 do_test || rc=1
      do_bench || rc=1
      PYTEST_ONLY=1 do_test || rc=1
    fi ;;
  latency) do_latency || rc=1 ;;
  containment)  # build; cuda_test, the CPU worker tests, the poison case; isolation cost
    do_build || rc=1
    if [[ $rc == 0 ]]; then
      model_dirs
      ctest --test-dir "$BUILD" -R "make_fixture" >/dev/null 2>&1
      log "cuda_test ${CUDA_TEST_FILTER:-}"
      PT2SERVE_CUDA_MODEL_DIR=$CUDA_DIR timeout 200 "$BUILD/tests/cuda_test" ${CUDA_TEST_FILTER:-} -r compact \
        >"$OUT/cuda_test.log" 2>&1 || rc=1
      grep -E "Passed|Failed|passed all|failed|warning|answered|served again" "$OUT/cuda_test.log" \
        | tail -n 14 | tee -a "$OUT/steps.log"
      if [[ -n ${CONTAINMENT_QUICK:-} ]]; then
        log "stage containment (quick) finished rc=$rc"
        exit $rc
      fi
      log "runtime_test (CPU packages of this host's torch, worker process cases)"
      PT2SERVE_MODEL_DIR=$CPU_DIR PT2SERVE_FIXTURE_DIR=$BUILD/fixtures timeout 200 \
        "$BUILD/tests/runtime_test" "*worker*,*isolation*,*restart*,*kernel error*" -r compact \
        >"$OUT/runtime_worker.log" 2>&1 || rc=1
      tail -n 3 "$OUT/runtime_worker.log" | tee -a "$OUT/steps.log"
      do_containment_bench || rc=1
    fi ;;
  staging)  # issue 14 (staging orders its device work before requests) + issue 11 (transfer)
    do_build || rc=1
    if [[ $rc == 0 ]]; then
      model_dirs
      ctest --test-dir "$BUILD" -R "make_fixture" >/dev/null 2>&1
      log "cuda_test"
      PT2SERVE_CUDA_MODEL_DIR=$CUDA_DIR PT2SERVE_FIXTURE_DIR=$BUILD/fixtures timeout 200 \
        "$BUILD/tests/cuda_test" -r compact >"$OUT/cuda_test.log" 2>&1 || rc=1
      grep -E "Passed|Failed|passed all|failed|warning|stale" "$OUT/cuda_test.log" | tail -n 14 \
        | tee -a "$OUT/steps.log"
      # The same stale-read test against the runtime without the staging sync: it must fail,
      # or the test proves nothing. The source is restored right after.
      log "stale-read test WITHOUT the staging sync (expected to FAIL)"
      cp runtime/local_replica.cc /tmp/local_replica.cc.orig
      sed -i -e '/PT2_RETURN_IF_ERROR(SynchronizeDevice(device));/d' \
        -e 's/return SynchronizeDevice(info().device);/return Status::Ok();/' runtime/local_replica.cc
      if cmake --build "$BUILD" --target cuda_test >"$LOGS/nosync-build.log" 2>&1; then
        PT2SERVE_CUDA_MODEL_DIR=$CUDA_DIR PT2SERVE_FIXTURE_DIR=$BUILD/fixtures timeout 120 \
          "$BUILD/tests/cuda_test" "a request right after a swap*" -r compact \
          >"$OUT/cuda_test_nosync.log" 2>&1 && log "WITHOUT the sync the test PASSED (it cannot catch the race)" \
          || log "WITHOUT the sync the test FAILED, as it must"
        grep -E "stale|failed|passed" "$OUT/cuda_test_nosync.log" | tail -n 6 | tee -a "$OUT/steps.log"
      else
        log "no-sync build failed"; tail -n 20 "$LOGS/nosync-build.log"
      fi
      cp /tmp/local_replica.cc.orig runtime/local_replica.cc
      cmake --build "$BUILD" --target cuda_test pt2serve >"$LOGS/resync-build.log" 2>&1 || rc=1
      do_bench_upload || rc=1
    fi ;;
  upload)  # issue 11: weight transfer only (build, big_mlp and huge_mlp upload benchmarks),
            # with the host-to-device bandwidth of a plain copy loop as the reference
    do_build || rc=1
    if [[ $rc == 0 ]]; then
      $PY - <<'PYCOPY' 2>&1 | tee -a "$OUT/steps.log"
import time, torch
n = 2 << 30  # 2 GiB
dev = torch.empty(n, dtype=torch.uint8, device="cuda")
for label, pinned in (("pinned", True), ("pageable", False)):
    host = torch.ones(n, dtype=torch.uint8, pin_memory=pinned)
    dev.copy_(host, non_blocking=pinned); torch.cuda.synchronize()
    t0 = time.perf_counter(); dev.copy_(host, non_blocking=pinned); torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"plain H2D copy, {label} host memory: {n / dt / 1e9:.1f} GB/s ({n / 1e9:.2f} GB in {dt:.3f} s)")
# The same bytes in 8 MiB copies (device staging's block size) from one pinned 64 MiB ring.
piece, ring = 8 << 20, torch.ones(64 << 20, dtype=torch.uint8, pin_memory=True)
torch.cuda.synchronize(); t0 = time.perf_counter()
for i in range(n // piece):
    at = (i % 8) * piece
    dev[i * piece:(i + 1) * piece].copy_(ring[at:at + piece], non_blocking=True)
torch.cuda.synchronize(); dt = time.perf_counter() - t0
print(f"plain H2D copy, 8 MiB pieces from pinned memory: {n / dt / 1e9:.1f} GB/s")
PYCOPY
      echo "SHA-256 (OpenSSL, 8 MiB blocks): $(openssl speed -seconds 2 -bytes 8388608 -evp sha256 \
        2>/dev/null | tail -n 1); sha_ni: $(grep -c -m 1 -w sha_ni /proc/cpuinfo)" | tee -a "$OUT/steps.log"
      model_dirs
      ctest --test-dir "$BUILD" -R "make_fixture" >/dev/null 2>&1
      log "cuda_test [staging]: pinned ring, transient device copy"
      PT2SERVE_CUDA_MODEL_DIR=$CUDA_DIR PT2SERVE_FIXTURE_DIR=$BUILD/fixtures timeout 120 \
        "$BUILD/tests/cuda_test" "[staging]" -r compact >"$OUT/cuda_test_staging.log" 2>&1 || rc=1
      tail -n 6 "$OUT/cuda_test_staging.log" | tee -a "$OUT/steps.log"
      do_bench_upload || rc=1
    fi ;;
  peers)  # issue 10: batching gain and pt2serve vs the Python grpcio peer on the GPU
    do_build || rc=1
    if [[ $rc == 0 ]]; then
      model_dirs
      cat > /tmp/perf_analyzer <<WRAP
#!/usr/bin/env bash
LD_LIBRARY_PATH=$ROOT/.pa/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} exec $ROOT/.pa/bin/perf_analyzer "\$@"
WRAP
      chmod +x /tmp/perf_analyzer
      peers_dir=$CUDA_DIR peers_models=${PEERS_MODELS:-mlp,cnn}
      if [[ -n ${PEERS_MID:-} ]]; then  # the mid-size model (tools/bench/mid_mlp.py) instead
        peers_dir=/tmp/pt2serve-mid peers_models=midmlp
        log "exporting midmlp for CUDA"
        (cd tools/bench && timeout 200 $PY ../export/export_model.py module --target mid_mlp:MidMLP \
           --inputs x:float32:-1,1024 --outputs y --max-batch 64 --device cuda --out "$peers_dir") \
          >"$LOGS/export-mid.log" 2>&1 || log "midmlp export failed: $(tail -n 3 "$LOGS/export-mid.log")"
      fi
      # The pytriton rows need the two pytriton-wheels calls before this one (see above).
      skip_pytriton=--skip-pytriton
      if $PY -c 'import pytriton.triton, zmq' >/dev/null 2>&1; then
        skip_pytriton=
        log "pytriton found (numpy $($PY -c 'import numpy;print(numpy.__version__)')): its rows run too"
      fi
      log "peers on $peers_dir ($peers_models)"
      timeout ${PEERS_TIMEOUT:-420} tools/bench/peers/run_peers.sh --out "$OUT/peers-cuda.md" \
        --pt2serve "$BUILD/server/pt2serve" --model-dir "$peers_dir" --models "$peers_models" \
        --device cuda --perf-analyzer /tmp/perf_analyzer --peers-python "$PY" $skip_pytriton \
        ${PEERS_ARGS:---no-repeat} >"$LOGS/peers.log" 2>&1 || rc=1
      tail -n 30 "$LOGS/peers.log" | tee -a "$OUT/steps.log"
    fi ;;
  soak)  # issue 14: push+swap cycles under oversubscribed load on the CUDA packages
    do_build || rc=1
    if [[ $rc == 0 ]]; then
      model_dirs
      log "soak: ${SOAK_CYCLES:-1000} cycles x ${SOAK_MODELS:-mlp,cnn,two_io,tiny_lm} on $CUDA_DIR"
      PT2SERVE_BUILD_DIR=$BUILD timeout ${SOAK_TIMEOUT:-480} $PY tools/bench/soak.py \
        --cycles "${SOAK_CYCLES:-1000}" --models "${SOAK_MODELS:-mlp,cnn,two_io,tiny_lm}" \
        --device cuda --model-dir "$CUDA_DIR" --daemon "$BUILD/server/pt2serve" \
        --pt2ctl "$BUILD/tools/pt2ctl/pt2ctl" --json "$OUT/soak-cuda.json" ${SOAK_ARGS:-} \
        >"$OUT/soak-cuda.log" 2>&1 || rc=1
      tail -n 40 "$OUT/soak-cuda.log" | tee -a "$OUT/steps.log"
    fi ;;
  memory)  # issue 11 part 3: what weights status reports on the GPU at each step of a push
    do_build || rc=1
    if [[ $rc == 0 ]]; then
      model_dirs
      $PY tools/export/export_model.py zoo --device cuda --models big_mlp >"$LOGS/export-big.log" 2>&1 \
        || log "big_mlp export failed: $(tail -n 3 "$LOGS/export-big.log")"
      start_admin_daemon "big_mlp=$CUDA_DIR/big_mlp.pt2"
      ctl() { "$BUILD/tools/pt2ctl/pt2ctl" --admin-address $ADMIN --token-file /tmp/admin.token --json "$@"; }
      {
        echo "== serving"; ctl weights status big_mlp
        echo "== push (staged)"; ctl weights push big_mlp "$CUDA_DIR/big_mlp.weights.safetensors" --version v2
        echo "== staged"; ctl weights status big_mlp
        echo "== swap"; ctl weights swap big_mlp --expect v2 >/dev/null; ctl weights status big_mlp
        echo "== free-inactive"; ctl weights free-inactive big_mlp >/dev/null; ctl weights status big_mlp
        echo "== push after free"; ctl weights push big_mlp "$CUDA_DIR/big_mlp.weights.safetensors" --version v3
        echo "== staged after free"; ctl weights status big_mlp
      } >"$OUT/memory-cuda.log" 2>&1 || rc=1
      nvidia-smi --query-gpu=memory.used --format=csv >>"$OUT/memory-cuda.log" 2>&1
      kill -TERM $DAEMON_PID; wait $DAEMON_PID
      log "memory stage done (memory-cuda.log)"
    fi ;;
  sdk)  # issue 11 part 2: the Python SDK's push --swap of big_mlp to a CUDA daemon
    do_build || rc=1  # ZOO_MODELS=mlp keeps the export short
    if [[ $rc == 0 ]]; then
      model_dirs
      $PY tools/export/export_model.py zoo --device cuda --models big_mlp >"$LOGS/export-big.log" 2>&1 \
        || log "big_mlp export failed: $(tail -n 3 "$LOGS/export-big.log")"
      timeout 60 $PY tools/bench/sdk_chunk_cost.py 2>&1 | tee -a "$OUT/steps.log"
      start_admin_daemon "big_mlp=$CUDA_DIR/big_mlp.pt2"
      # SDK_VARIANTS: ';'-separated sdk_push_bench.py options, one run each (e.g.
      # "--chunk-mib 2;--chunk-mib 0.5"; an empty one, e.g. a leading ";", runs with the
      # SDK's defaults); default: one run with the SDK's defaults.
      IFS=';' read -ra variants <<<"${SDK_VARIANTS:-}"
      for variant in "${variants[@]:-}"; do
        # shellcheck disable=SC2086 # a variant is several options
        timeout 120 $PY tools/bench/sdk_push_bench.py --admin $ADMIN \
          --token-file /tmp/admin.token --model big_mlp --weights "$CUDA_DIR/big_mlp.weights.safetensors" \
          --pushes ${SDK_PUSHES:-5} $variant 2>&1 | tail -n 12 | tee -a "$OUT/steps.log" || rc=1
      done
      kill -TERM $DAEMON_PID; wait $DAEMON_PID
    fi ;;
  quick-latency)
    do_build || rc=1
    if [[ $rc == 0 ]]; then
      SKIP_PYTEST=1 do_test || rc=1
      do_latency || rc=1
    fi ;;
  *) echo "usage: $0 build|test|bench|all|quick-all|latency|quick-latency|containment|fetch" >&2
     exit 2 ;;
esac
log "stage $STAGE finished rc=$rc"
exit $rc
