"""Weight memory accounting and staging budgets against the REAL daemon (issue 11 part 3).

What docs/hot-swap.md's memory table promises, measured through the daemon's own reports:
* GetModel / GetConstantBufferStatus / `pt2ctl weights status` / metrics report per buffer the
  bytes held (weight blob + constant-folded results; host for CPU models), which must match an
  independent reading of the package's constant table (the generated wrapper in the .pt2);
* while a set is STAGED (or kept as PREVIOUS) the model holds 2 buffers = 2 x (weights + folded),
  after free-inactive 1 buffer;
* the process RSS figures agree with /proc/<daemon pid>/status, and a push reports its peak;
* a push that would exceed the model's or the server's staging budget is refused with
  RESOURCE_EXHAUSTED at its header, before any chunk is sent, naming the budget and the bytes,
  and the active weights keep serving.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import ADMIN_TOKEN, BUILD_DIR, RPC_TIMEOUT, metric, parse_metrics, scrape, \
    start_daemon

PT2CTL = BUILD_DIR / "tools" / "pt2ctl" / "pt2ctl"
AUTH = [("authorization", f"Bearer {ADMIN_TOKEN}")]
ALIGN = 64  # AOTInductor's constant blob alignment (AOTI_CONST_ALIGNMENT)
DTYPE_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4,
              "int8": 1, "uint8": 1, "bool": 1}


# --------------------------------------------------------------------------------- helpers


def package_memory(pt2: Path) -> tuple[int, int]:
    """(blob bytes, folded bytes) of ONE constant buffer, read from the package's wrapper source:
    every non-folded constant padded to 64 bytes, plus the folded results' sizes."""
    with zipfile.ZipFile(pt2) as z:
        wrapper = next(n for n in z.namelist() if n.endswith(".wrapper.cpp"))
        text = z.read(wrapper).decode()
    fields: dict[int, dict[str, str]] = {}
    for i, field, value in re.findall(r"constants_info_\[(\d+)\]\.(\w+) = (.*);", text):
        fields.setdefault(int(i), {})[field] = value
    blob = folded = 0
    for c in fields.values():
        size = int(c.get("data_size", "0"))
        if size == 0 and "shape" in c:
            dtype = re.search(r"cached_torch_dtype_(\w+)", c.get("dtype", ""))
            dims = [int(d) for d in re.findall(r"-?\d+", c["shape"])]
            size = int(np.prod(dims, dtype=np.int64)) * DTYPE_SIZE[dtype.group(1)] if dtype else 0
        if c.get("from_folded") == "true" or "FoldedConstant" in c.get("type", ""):
            folded += size
        else:
            blob += (size + ALIGN - 1) // ALIGN * ALIGN
    return blob, folded


def fmt(n: int) -> str:
    """pt2ctl's FormatBytes."""
    return f"{n} B" if n < 1000 else f"{n / 1e3:.1f} KB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def get_model(pb, d, name: str):
    with d.channel() as ch:
        return pb.inference_pb2_grpc.InferenceStub(ch).GetModel(
            pb.inference_pb2.GetModelRequest(name=name), timeout=RPC_TIMEOUT)


def admin(pb, d):
    ch = grpc.insecure_channel(d.admin_url)
    return ch, pb.admin_pb2_grpc.AdminStub(ch)


def status(pb, d, name: str):
    ch, stub = admin(pb, d)
    with ch:
        return stub.GetConstantBufferStatus(pb.admin_pb2.ConstantBufferStatusRequest(model=name),
                                            metadata=AUTH, timeout=RPC_TIMEOUT)


NP_DTYPES = {"DT_FLOAT32": np.float32, "DT_FLOAT16": np.float16, "DT_FLOAT64": np.float64,
             "DT_INT64": np.int64, "DT_INT32": np.int32}


def random_weights(pb, info, seed: int) -> dict[str, np.ndarray]:
    """A full weight set for the model's updatable constants (values do not matter here)."""
    rng = np.random.default_rng(seed)
    names = pb.inference_pb2.DataType.Name
    return {c.name: rng.standard_normal(tuple(c.shape)).astype(NP_DTYPES[names(c.dtype)])
            for c in info.constants}


def header(pb, model: str, version: str, weights: dict[str, np.ndarray]):
    ap, ip = pb.admin_pb2, pb.inference_pb2
    to_proto = {np.dtype(v): getattr(ip, k) for k, v in NP_DTYPES.items()}
    entries = [ap.ManifestEntry(name=k, dtype=to_proto[v.dtype], shape=list(v.shape),
                                byte_size=v.nbytes) for k, v in weights.items()]
    return ap.UpdateConstantBufferRequest(header=ap.UpdateHeader(
        model=model, version=version, tensors=ap.TensorManifest(entries=entries)))


def push(pb, d, model: str, version: str, weights: dict[str, np.ndarray], chunk: int = 4096):
    ap = pb.admin_pb2
    msgs = [header(pb, model, version, weights)]
    for k, v in weights.items():
        data = v.tobytes()
        for off in range(0, len(data), chunk):
            msgs.append(ap.UpdateConstantBufferRequest(
                chunk=ap.TensorChunk(name=k, offset=off, data=data[off:off + chunk])))
    ch, stub = admin(pb, d)
    with ch:
        return stub.UpdateConstantBuffer(iter(msgs), metadata=AUTH, timeout=60)


def push_header_only(pb, d, model: str, version: str, weights) -> grpc.RpcError:
    """Sends only the header and keeps the stream open: the refusal must come without chunks
    and without the client half-closing."""
    release = threading.Event()

    def messages():
        yield header(pb, model, version, weights)
        release.wait(timeout=30)  # never half-close before the server answered

    ch, stub = admin(pb, d)
    try:
        with ch:
            with pytest.raises(grpc.RpcError) as e:
                stub.UpdateConstantBuffer(messages(), metadata=AUTH, timeout=20)
            assert not release.is_set()
            return e.value
    finally:
        release.set()


def server_side_push(pb, d, model: str, version: str, rel_path: str):
    ap = pb.admin_pb2
    msg = ap.UpdateConstantBufferRequest(header=ap.UpdateHeader(
        model=model, version=version, server_path=rel_path))
    ch, stub = admin(pb, d)
    with ch:
        return stub.UpdateConstantBuffer(iter([msg]), metadata=AUTH, timeout=60)


def free_inactive(pb, d, model: str):
    ch, stub = admin(pb, d)
    with ch:
        return stub.FreeInactiveConstantBuffer(pb.admin_pb2.FreeInactiveRequest(model=model),
                                               metadata=AUTH, timeout=RPC_TIMEOUT)


def swap(pb, d, model: str):
    ch, stub = admin(pb, d)
    with ch:
        return stub.SwapConstantBuffer(pb.admin_pb2.SwapRequest(model=model), metadata=AUTH,
                                       timeout=RPC_TIMEOUT)


def assert_serves_initial(pb, d, model_dir: Path) -> None:
    """mlp answers the reference input with the reference output of its compiled-in weights."""
    from safetensors.numpy import load_file
    ref = load_file(str(model_dir / "mlp.reference.safetensors"))
    x, want = ref["input.x"], ref["output.y"]
    ip = pb.inference_pb2
    with d.channel() as ch:
        resp = pb.inference_pb2_grpc.InferenceStub(ch).Run(ip.RunRequest(model="mlp", inputs=[
            ip.Tensor(name="x", dtype=ip.DT_FLOAT32, shape=list(x.shape), data=x.tobytes())]),
            timeout=RPC_TIMEOUT)
    assert resp.weights_version == "initial"
    y = np.frombuffer(resp.outputs[0].data, np.float32).reshape(want.shape)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, model_dir) -> Path:
    root = tmp_path_factory.mktemp("memacct_repo")
    for name in ("mlp", "cnn"):
        shutil.copyfile(model_dir / f"{name}.pt2", root / f"{name}.pt2")
    return root


# ------------------------------------------------------------------------------------ tests


def test_status_numbers_follow_stage_swap_free(pb, repo, daemon_path, tmp_path, model_dir):
    d = start_daemon(tmp_path / "d", models=[{"name": "mlp", "path": str(repo / "mlp.pt2")}],
                     server={"model_repository": str(repo)}, admin=True, metrics=True)
    try:
        blob, folded = package_memory(repo / "mlp.pt2")
        info = get_model(pb, d, "mlp")
        w = info.constants_bytes
        buffer = blob + folded
        assert blob >= w > 0
        mem = info.weights_memory
        # Serving: one buffer, host memory (a CPU model), as the package's table says.
        assert (mem.active.host_bytes, mem.active.device_bytes) == (buffer, 0)
        assert mem.active.folded_bytes == folded
        assert (mem.inactive.host_bytes, mem.staging_bytes) == (0, 0)
        assert mem.last_push.version == ""

        resp = push(pb, d, "mlp", "v1", random_weights(pb, info, 1))
        # The push reserved its upload buffers (W) + the inactive buffer, and measured its peak.
        assert resp.memory.version == "v1" and resp.memory.ok
        assert resp.memory.staging_bytes == w + buffer
        assert 0 < resp.memory.process_rss_before_bytes <= resp.memory.process_peak_rss_bytes
        assert resp.memory.device_peak_used_bytes == 0  # CPU model

        st = status(pb, d, "mlp")
        # STAGED: 2 x (weights + folded); the upload buffers are gone.
        assert st.inactive.state == pb.admin_pb2.STAGED
        assert st.memory.active.host_bytes == st.memory.inactive.host_bytes == buffer
        assert st.memory.inactive.folded_bytes == folded
        assert st.memory.upload_bytes == 0
        assert st.memory.device_upload_bytes == 0  # CPU model: no device staging
        assert st.memory.staging_bytes == st.memory.server_staging_bytes == buffer
        assert st.memory.server_staging_budget_bytes == 0
        assert st.bytes_in_use == 2 * w

        swap(pb, d, "mlp")  # the old set is kept as PREVIOUS: still 2 buffers
        st = status(pb, d, "mlp")
        assert st.inactive.state == pb.admin_pb2.PREVIOUS
        assert st.memory.inactive.host_bytes == buffer

        # Metrics say the same, per buffer.
        fams = parse_metrics(scrape(d))

        def m(sample, **labels):
            from conftest import sample_value
            return sample_value(fams, sample, **labels)

        assert m("pt2serve_weights_memory_bytes", model="mlp", buffer="active",
                 memory="host") == buffer
        assert m("pt2serve_weights_memory_bytes", model="mlp", buffer="inactive",
                 memory="host") == buffer
        assert m("pt2serve_weights_memory_bytes", model="mlp", buffer="active",
                 memory="folded") == folded
        assert m("pt2serve_weights_staging_bytes", model="mlp") == buffer
        # No push in progress: no upload buffers, no transient device copy.
        assert m("pt2serve_weights_memory_bytes", model="mlp", buffer="upload", memory="host") == 0
        assert m("pt2serve_weights_memory_bytes", model="mlp", buffer="upload",
                 memory="device") == 0
        assert m("pt2serve_server_weights_staging_bytes", kind="in_use") == buffer
        assert m("pt2serve_weights_push_peak_bytes", model="mlp",
                 memory="process_rss") == resp.memory.process_peak_rss_bytes

        freed = free_inactive(pb, d, "mlp")
        assert freed.freed_bytes == w
        st = status(pb, d, "mlp")
        # After free-inactive: 1 buffer.
        assert (st.memory.inactive.host_bytes, st.memory.inactive.folded_bytes) == (0, 0)
        assert st.memory.active.host_bytes == buffer
        assert st.memory.staging_bytes == st.memory.server_staging_bytes == 0
        assert metric(d, "pt2serve_weights_memory_bytes", model="mlp", buffer="inactive",
                      memory="host") == 0

        # Process figures: what the kernel says about the daemon.
        kernel = proc_status(d.pid)
        rss = st.memory.process_rss_bytes
        assert 0.75 * kernel["VmRSS"] <= rss <= 1.25 * kernel["VmRSS"], (rss, kernel)
        assert st.memory.process_peak_rss_bytes >= rss
        assert st.memory.process_peak_rss_bytes >= 0.9 * kernel["VmHWM"], kernel
        assert 0 < metric(d, "pt2serve_process_resident_memory_bytes", kind="current")

        # A push after a free refolds the freed buffer first: it reserves that F too.
        from safetensors.numpy import save_file
        save_file(random_weights(pb, info, 4), str(repo / "mlp.v3.safetensors"))
        resp = server_side_push(pb, d, "mlp", "v3", "mlp.v3.safetensors")
        assert resp.memory.staging_bytes == buffer + folded
        assert status(pb, d, "mlp").memory.staging_bytes == buffer

        if PT2CTL.is_file():  # the operator's view shows the same numbers
            p = subprocess.run([str(PT2CTL), "--admin-address", d.admin_url, "--address", d.url,
                                "--token-file", str(d.workdir / "admin.token"), "--json",
                                "weights", "status", "mlp"], capture_output=True, text=True,
                               timeout=30)
            assert p.returncode == 0, p.stderr
            js = json.loads(p.stdout)
            assert int(js["memory"]["active"]["host_bytes"]) == buffer
            assert js["memory"]["last_push"]["version"] == "v3"
            p = subprocess.run([str(PT2CTL), "--admin-address", d.admin_url, "--address", d.url,
                                "--token-file", str(d.workdir / "admin.token"),
                                "weights", "status", "mlp"], capture_output=True, text=True,
                               timeout=30)
            assert p.returncode == 0, p.stderr
            assert "HOST" in p.stdout and "FOLDED" in p.stdout
            assert f"staging: {fmt(buffer)} held" in p.stdout and "process: RSS" in p.stdout
            assert "last push 'v3' (staged" in p.stdout

        # Unloading drops the model's series.
        ch, stub = admin(pb, d)
        with ch:
            stub.UnloadModel(pb.admin_pb2.UnloadModelRequest(name="mlp"), metadata=AUTH,
                             timeout=RPC_TIMEOUT)
        assert 'model="mlp"' not in "\n".join(
            line for line in scrape(d).splitlines()
            if line.startswith(("pt2serve_weights_memory_bytes", "pt2serve_weights_staging")))
    finally:
        d.kill()


def test_budgets_refuse_pushes_at_the_header(pb, repo, daemon_path, tmp_path, model_dir):
    mlp_buffer = sum(package_memory(repo / "mlp.pt2"))
    cnn_buffer = sum(package_memory(repo / "cnn.pt2"))
    # mlp's own budget fits a server-side push (the inactive buffer only) but not a streamed one
    # (+ upload buffers); the server's fits both models' inactive buffers minus one byte.
    d = start_daemon(tmp_path / "d",
                     models=[{"name": "mlp", "path": str(repo / "mlp.pt2"),
                              "weights_staging_budget_bytes": mlp_buffer},
                             {"name": "cnn", "path": str(repo / "cnn.pt2")}],
                     server={"model_repository": str(repo),
                             "weights_staging_budget_bytes": mlp_buffer + cnn_buffer - 1},
                     admin=True, metrics=False)
    try:
        mlp, cnn = get_model(pb, d, "mlp"), get_model(pb, d, "cnn")
        assert mlp.weights_memory.staging_budget_bytes == mlp_buffer
        mlp_weights, cnn_weights = random_weights(pb, mlp, 2), random_weights(pb, cnn, 3)
        from safetensors.numpy import save_file
        save_file(mlp_weights, str(repo / "mlp.v2.safetensors"))
        save_file(cnn_weights, str(repo / "cnn.v2.safetensors"))

        # 1. Streamed push to mlp: over the model's budget, refused at the header.
        err = push_header_only(pb, d, "mlp", "v2", mlp_weights)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        need = mlp.constants_bytes + mlp_buffer
        assert "weights_staging_budget_bytes" in err.details()
        assert f"needs {need} bytes" in err.details() and f"({mlp_buffer} bytes)" in err.details()
        st = status(pb, d, "mlp")
        assert st.inactive.state == pb.admin_pb2.EMPTY and st.active.version == "initial"
        assert (st.memory.staging_bytes, st.memory.upload_bytes) == (0, 0)
        assert not st.memory.last_push.ok and st.memory.last_push.staging_bytes == need
        assert st.last_error.startswith("update: RESOURCE_EXHAUSTED")
        assert_serves_initial(pb, d, model_dir)

        # 2. A server-side push needs only the inactive buffer: within both budgets.
        server_side_push(pb, d, "mlp", "v2", "mlp.v2.safetensors")
        assert status(pb, d, "mlp").memory.server_staging_bytes == mlp_buffer

        # 3. cnn's push would take the server past its budget (mlp holds its staged set).
        err = push_header_only(pb, d, "cnn", "v2", cnn_weights)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert "server.weights_staging_budget_bytes" in err.details()
        assert f"{mlp_buffer} bytes other models hold" in err.details()
        st = status(pb, d, "cnn")
        assert st.inactive.state == pb.admin_pb2.EMPTY and st.memory.staging_bytes == 0
        with pytest.raises(grpc.RpcError) as e:
            server_side_push(pb, d, "cnn", "v2", "cnn.v2.safetensors")
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_serves_initial(pb, d, model_dir)  # mlp still serves its active weights

        # 4. Freeing mlp's inactive buffer gives the budget back.
        free_inactive(pb, d, "mlp")
        assert status(pb, d, "mlp").memory.server_staging_bytes == 0
        server_side_push(pb, d, "cnn", "v2", "cnn.v2.safetensors")
        st = status(pb, d, "cnn")
        assert st.inactive.state == pb.admin_pb2.STAGED
        assert st.memory.server_staging_bytes == cnn_buffer
        assert d.alive()
    finally:
        d.kill()
