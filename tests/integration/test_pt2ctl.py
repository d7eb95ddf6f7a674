"""pt2ctl against the REAL daemon: models list/load/unload, weight push/swap/rollback/free,
status, authentication, exit codes, and bad updates (through pt2ctl and a raw grpcio client).

Every test gets its own daemon (start-up takes well under a second): mlp with 2 runners, an
admin listener with a token file, and a model repository in a tmp dir holding COPIES of the zoo
packages (the server resolves symlinks and refuses paths that leave the repository) plus an
alternative mlp weight set (seed 7) made by the exporter, with its eager reference output.

Exit codes checked (tools/pt2ctl/README.md): 0 ok, 1 server refused, 2 usage/local error,
3 unreachable. Uses conftest.py's `start_daemon`, `pb` (generated stubs) and `refs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import ADMIN_TOKEN, BUILD_DIR, REPO, free_port, start_daemon

PT2CTL = BUILD_DIR / "tools" / "pt2ctl" / "pt2ctl"
EXPORTER = REPO / "tools" / "export" / "export_model.py"
SEED = 7
RTOL, ATOL = 1e-5, 1e-6

pytestmark = pytest.mark.skipif(not PT2CTL.is_file(),
                                reason=f"pt2ctl not built at {PT2CTL} (ninja -C build pt2ctl)")


# --------------------------------------------------------------------------------- helpers


def export_weights(out_dir: Path, seeds: list[int], model: str = "mlp") -> None:
    """seed{N}.safetensors + seed{N}.reference.safetensors for each seed, exported in parallel."""
    procs = []
    for seed in seeds:
        cmd = [sys.executable, str(EXPORTER), "weights", "--model", model, "--seed", str(seed),
               "--out", str(out_dir / f"seed{seed}.safetensors"),
               "--reference", str(out_dir / f"seed{seed}.reference.safetensors")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"exporter failed:\n{err[-3000:]}"


def load_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load_file
    t = load_file(str(path))
    return t["input.x"], t["output.y"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, model_dir) -> Path:
    """Model repository: copies of mlp.pt2 / cnn.pt2 and the seed-7 weight set."""
    root = tmp_path_factory.mktemp("pt2ctl_repo")
    for name in ("mlp", "cnn"):
        shutil.copyfile(model_dir / f"{name}.pt2", root / f"{name}.pt2")
    export_weights(root, [SEED])
    return root


@pytest.fixture(scope="module")
def references(repo, model_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """weights version -> (input x, eager output y)."""
    return {"initial": load_reference(model_dir / "mlp.reference.safetensors"),
            f"seed{SEED}": load_reference(repo / f"seed{SEED}.reference.safetensors")}


@pytest.fixture
def daemon(tmp_path, repo, daemon_path):
    d = start_daemon(tmp_path / "daemon",
                     models=[{"name": "mlp", "path": str(repo / "mlp.pt2"), "num_runners": 2}],
                     server={"model_repository": str(repo)}, admin=True, metrics=False)
    try:
        yield d
    finally:
        d.kill()


def run_ctl(d, *args: str, token: str | None = "file", cwd: Path | None = None,
            env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """pt2ctl with d's addresses. token: "file" (the daemon's token file), None, or a literal."""
    cmd = [str(PT2CTL), "--admin-address", d.admin_url, "--address", d.url]
    if token == "file":
        cmd += ["--token-file", str(d.workdir / "admin.token")]
    elif token is not None:
        cmd += ["--token", token]
    cmd += list(args)
    environ = {k: v for k, v in os.environ.items() if k != "PT2SERVE_ADMIN_TOKEN"}
    environ.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=environ)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, (f"pt2ctl exit {p.returncode}\nstdout:\n{p.stdout}\n"
                               f"stderr:\n{p.stderr}")
    return p


def refused(p: subprocess.CompletedProcess, code: str, exit_code: int = 1) -> None:
    assert p.returncode == exit_code, (f"expected exit {exit_code} ({code}), got {p.returncode}\n"
                                       f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    if code:
        assert f"pt2ctl: {code}: " in p.stderr, f"expected '{code}' in stderr:\n{p.stderr}"


def run_mlp(pb, d, x: np.ndarray) -> tuple[str, np.ndarray]:
    """Inference.Run on mlp -> (weights_version, y)."""
    ip = pb.inference_pb2
    with d.channel() as ch:
        stub = pb.inference_pb2_grpc.InferenceStub(ch)
        req = ip.RunRequest(model="mlp", inputs=[ip.Tensor(
            name="x", dtype=ip.DT_FLOAT32, shape=list(x.shape), data=x.tobytes())])
        resp = stub.Run(req, timeout=10)
    out = resp.outputs[0]
    return resp.weights_version, np.frombuffer(out.data, np.float32).reshape(tuple(out.shape))


def assert_serves(pb, d, references, version: str) -> None:
    """mlp reports `version` and its output equals that version's eager reference."""
    x, want = references[version]
    got_version, y = run_mlp(pb, d, x)
    assert got_version == version, f"serving '{got_version}', expected '{version}'"
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL,
                               err_msg=f"output of weights '{version}' != its eager reference")


def status_json(d) -> dict:
    return json.loads(ok(run_ctl(d, "--json", "weights", "status", "mlp")).stdout)


def admin_stub(pb, ch):
    return pb.admin_pb2_grpc.AdminStub(ch)


def admin_channel(d) -> grpc.Channel:
    return grpc.insecure_channel(d.admin_url)


AUTH = [("authorization", f"Bearer {ADMIN_TOKEN}")]


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def seed_weights(repo) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(repo / f"seed{SEED}.safetensors"))


def update_messages(pb, weights: dict[str, np.ndarray], version: str, *, sha256: str = "",
                    chunk: int = 1024, drop_last: int = 0):
    """Header + chunks for a streamed update of `weights`, in dict order."""
    ap, ip = pb.admin_pb2, pb.inference_pb2
    dt = {np.dtype(np.float32): ip.DT_FLOAT32, np.dtype(np.float64): ip.DT_FLOAT64}
    entries = [ap.ManifestEntry(name=k, dtype=dt[v.dtype], shape=list(v.shape), byte_size=v.nbytes)
               for k, v in weights.items()]
    msgs = [ap.UpdateConstantBufferRequest(header=ap.UpdateHeader(
        model="mlp", version=version, sha256=sha256, tensors=ap.TensorManifest(entries=entries)))]
    for k, v in weights.items():
        data = v.tobytes()
        for off in range(0, len(data), chunk):
            msgs.append(ap.UpdateConstantBufferRequest(
                chunk=ap.TensorChunk(name=k, offset=off, data=data[off:off + chunk])))
    return msgs[:len(msgs) - drop_last]


# ---------------------------------------------------------------------------- models


def test_models_list_load_unload(daemon, pb):
    listed = json.loads(ok(run_ctl(daemon, "--json", "models", "list", token=None)).stdout)
    assert [(m["name"], m["state"], m["weights_version"]) for m in listed["models"]] == [
        ("mlp", "READY", "initial")]
    human = ok(run_ctl(daemon, "models", "list", token=None)).stdout.splitlines()
    assert human[0].split() == ["NAME", "STATE", "WEIGHTS", "REASON"]
    assert human[1].split() == ["mlp", "READY", "initial"]

    loaded = ok(run_ctl(daemon, "--json", "models", "load", "cnn", "cnn.pt2", "--runners", "3",
                        "--queue", "5", "--device", "cpu", "--cpu-threads", "1"))
    model = json.loads(loaded.stdout)["model"]
    assert (model["name"], model["state"], model["weights_version"]) == ("cnn", "READY", "initial")
    with daemon.channel() as ch:
        info = pb.inference_pb2_grpc.InferenceStub(ch).GetModel(
            pb.inference_pb2.GetModelRequest(name="cnn"), timeout=10)
    assert (info.num_runners, info.max_queue_size, info.device, info.cpu_threads) == \
        (3, 5, "cpu", 1)
    # The server checks the range itself too (pt2ctl refuses it locally).
    with admin_channel(daemon) as ch:
        with pytest.raises(grpc.RpcError) as e:
            admin_stub(pb, ch).LoadModel(pb.admin_pb2.LoadModelRequest(
                name="cnn2", package_path="cnn.pt2", cpu_threads=-3), timeout=10, metadata=AUTH)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cpu_threads" in \
        e.value.details(), e.value
    names = [m["name"] for m in json.loads(ok(run_ctl(daemon, "--json", "models", "list")).stdout)
             ["models"]]
    assert names == ["cnn", "mlp"]

    refused(run_ctl(daemon, "models", "load", "cnn", "cnn.pt2"), "ALREADY_EXISTS")
    refused(run_ctl(daemon, "models", "load", "other", "nope.pt2"), "NOT_FOUND")
    refused(run_ctl(daemon, "models", "load", "bad name", "cnn.pt2"), "INVALID_ARGUMENT")

    assert ok(run_ctl(daemon, "models", "unload", "cnn")).stdout.strip() == "unloaded cnn"
    names = [m["name"] for m in json.loads(ok(run_ctl(daemon, "--json", "models", "list")).stdout)
             ["models"]]
    assert names == ["mlp"]
    refused(run_ctl(daemon, "models", "unload", "cnn"), "NOT_FOUND")


def test_paths_outside_repository_are_invalid_argument(daemon, repo):
    """admin.proto, LoadModelRequest.package_path: 'Absolute paths and paths that leave the root
    ("..") are INVALID_ARGUMENT'; UpdateHeader.server_path follows 'the same rules'.
    (The server answers PERMISSION_DENIED: a server/proto mismatch, reported.)"""
    outside = repo.parent / "outside.safetensors"
    shutil.copyfile(repo / f"seed{SEED}.safetensors", outside)
    problems = []
    for path in ("../mlp.pt2", "/etc/passwd", str(repo / "mlp.pt2")):
        p = run_ctl(daemon, "models", "load", "escape", path)
        if p.returncode != 1 or "pt2ctl: INVALID_ARGUMENT: " not in p.stderr:
            problems.append(f"models load escape {path}: exit {p.returncode}: {p.stderr.strip()}")
    for path in ("../outside.safetensors", str(outside)):
        p = run_ctl(daemon, "weights", "push", "mlp", path, "--server-side", "--sha256", "0" * 64)
        if p.returncode != 1 or "pt2ctl: INVALID_ARGUMENT: " not in p.stderr:
            problems.append(f"weights push mlp {path} --server-side: exit {p.returncode}: "
                            f"{p.stderr.strip()}")
    assert not problems, "expected INVALID_ARGUMENT (admin.proto):\n" + "\n".join(problems)


# --------------------------------------------------------------------------- weights


def test_push_swap_rollback_free(daemon, pb, repo, references):
    assert_serves(pb, daemon, references, "initial")
    seed_file = repo / f"seed{SEED}.safetensors"
    p = ok(run_ctl(daemon, "weights", "push", "mlp", str(seed_file), "--swap",
                   "--chunk-size-mb", "0.001"))
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"pushed 'seed{SEED}' to mlp: 4 tensors"), p.stdout
    assert lines[1].startswith(f"swapped mlp: active 'seed{SEED}' (previous 'initial')"), p.stdout
    assert_serves(pb, daemon, references, f"seed{SEED}")

    st = status_json(daemon)
    assert st["active"]["state"] == "ACTIVE" and st["active"]["version"] == f"seed{SEED}"
    assert st["active"]["source"] == "stream" and len(st["active"]["sha256"]) == 64
    assert st["inactive"]["state"] == "PREVIOUS" and st["inactive"]["version"] == "initial"
    assert int(st["bytes_in_use"]) == int(st["active"]["bytes"]) + int(st["inactive"]["bytes"])
    table = ok(run_ctl(daemon, "weights", "status", "mlp")).stdout
    assert "ACTIVE" in table and "PREVIOUS" in table and st["active"]["sha256"][:12] in table

    p = ok(run_ctl(daemon, "weights", "rollback", "mlp"))
    assert p.stdout.startswith(f"rolled back mlp: active 'initial' (previous 'seed{SEED}')")
    assert_serves(pb, daemon, references, "initial")
    # A second rollback undoes the first.
    ok(run_ctl(daemon, "weights", "rollback", "mlp"))
    assert_serves(pb, daemon, references, f"seed{SEED}")
    ok(run_ctl(daemon, "weights", "rollback", "mlp"))
    assert_serves(pb, daemon, references, "initial")

    freed = json.loads(ok(run_ctl(daemon, "--json", "weights", "free-inactive", "mlp")).stdout)
    assert int(freed["freed_bytes"]) > 0
    st = status_json(daemon)
    assert st["inactive"]["state"] == "EMPTY" and int(st["inactive"]["bytes"]) == 0
    p = run_ctl(daemon, "weights", "rollback", "mlp")
    refused(p, "FAILED_PRECONDITION")
    assert_serves(pb, daemon, references, "initial")
    # Freeing an EMPTY buffer succeeds with 0 bytes.
    freed = json.loads(ok(run_ctl(daemon, "--json", "weights", "free-inactive", "mlp")).stdout)
    assert int(freed["freed_bytes"]) == 0


def test_push_then_swap_separately_and_json(daemon, pb, repo, references):
    seed_file = repo / f"seed{SEED}.safetensors"
    out = json.loads(ok(run_ctl(daemon, "--json", "weights", "push", "mlp", str(seed_file),
                                "--version", "v2")).stdout)
    assert out["update"]["version"] == "v2" and out["update"]["tensors"] == 4
    assert int(out["update"]["staged_bytes"]) == sum(v.nbytes for v in seed_weights(repo).values())
    assert out["client"]["chunks"] == 4 and out["client"]["bytes_sent"] == int(
        out["update"]["staged_bytes"])
    assert_serves(pb, daemon, references, "initial")  # staged, not yet active
    st = status_json(daemon)
    assert (st["inactive"]["state"], st["inactive"]["version"]) == ("STAGED", "v2")
    assert st["inactive"]["sha256"] == out["client"]["sha256"]

    refused(run_ctl(daemon, "weights", "swap", "mlp", "--expect", "v3"), "FAILED_PRECONDITION")
    swapped = json.loads(ok(run_ctl(daemon, "--json", "weights", "swap", "mlp", "--expect",
                                    "v2")).stdout)
    assert (swapped["active_version"], swapped["previous_version"]) == ("v2", "initial")
    refs2 = dict(references, v2=references[f"seed{SEED}"])
    assert_serves(pb, daemon, refs2, "v2")
    refused(run_ctl(daemon, "weights", "swap", "mlp"), "FAILED_PRECONDITION")  # nothing staged


def test_server_side_push(daemon, pb, repo, references):
    # cwd = repository root: pt2ctl finds a local copy and sends its sha256.
    p = ok(run_ctl(daemon, "--json", "weights", "push", "mlp", f"seed{SEED}.safetensors",
                   "--server-side", "--swap", cwd=repo))
    out = json.loads(p.stdout)
    assert out["swap"]["active_version"] == f"seed{SEED}"
    assert len(out["client"]["sha256"]) == 64 and out["client"]["bytes_sent"] == 0
    assert_serves(pb, daemon, references, f"seed{SEED}")
    st = status_json(daemon)
    assert st["active"]["source"] == f"seed{SEED}.safetensors"
    assert st["active"]["sha256"] == out["client"]["sha256"]

    # Without a local copy no checksum is sent; with a wrong one the server refuses.
    elsewhere = repo.parent
    ok(run_ctl(daemon, "weights", "push", "mlp", f"seed{SEED}.safetensors", "--server-side",
               "--version", "again", cwd=elsewhere))
    assert status_json(daemon)["inactive"]["sha256"] == ""
    p = run_ctl(daemon, "weights", "push", "mlp", f"seed{SEED}.safetensors", "--server-side",
                "--sha256", "0" * 64, cwd=elsewhere)
    refused(p, "DATA_LOSS")
    refused(run_ctl(daemon, "weights", "push", "mlp", "missing.safetensors", "--server-side",
                    cwd=elsewhere), "NOT_FOUND")
    assert run_ctl(daemon, "weights", "push", "mlp", "x.safetensors", "--server-side",
                   "--sha256", "zz", cwd=elsewhere).returncode == 2
    assert_serves(pb, daemon, references, f"seed{SEED}")


# ------------------------------------------------------------------- auth and exit codes


def test_tokens(daemon, pb, repo):
    # No token at all: a local error, nothing is sent.
    p = run_ctl(daemon, "weights", "status", "mlp", token=None)
    assert p.returncode == 2 and "no admin token" in p.stderr, p.stderr
    # Wrong token: the server refuses.
    for args in (("weights", "status", "mlp"), ("weights", "swap", "mlp"),
                 ("weights", "push", "mlp", str(repo / f"seed{SEED}.safetensors")),
                 ("models", "unload", "mlp")):
        refused(run_ctl(daemon, *args, token="wrong-token"), "UNAUTHENTICATED")
    # The admin API without an authorization header (raw client).
    with admin_channel(daemon) as ch:
        with pytest.raises(grpc.RpcError) as e:
            admin_stub(pb, ch).GetConstantBufferStatus(
                pb.admin_pb2.ConstantBufferStatusRequest(model="mlp"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Token sources: --token beats --token-file beats $PT2SERVE_ADMIN_TOKEN.
    env_ok = {"PT2SERVE_ADMIN_TOKEN": ADMIN_TOKEN}
    env_bad = {"PT2SERVE_ADMIN_TOKEN": "wrong"}
    ok(run_ctl(daemon, "weights", "status", "mlp", token=None, env=env_ok))
    ok(run_ctl(daemon, "weights", "status", "mlp", token=ADMIN_TOKEN, env=env_bad))
    ok(run_ctl(daemon, "weights", "status", "mlp", token="file", env=env_bad))
    refused(run_ctl(daemon, "--token-file", str(daemon.workdir / "admin.token"), "weights",
                    "status", "mlp", token="wrong", env=env_ok), "UNAUTHENTICATED")
    p = run_ctl(daemon, "--token-file", "/nonexistent/token", "weights", "status", "mlp",
                token=None)
    assert p.returncode == 2 and "token file" in p.stderr
    # The error as JSON on stdout.
    p = run_ctl(daemon, "--json", "weights", "status", "mlp", token="wrong")
    assert p.returncode == 1
    err = json.loads(p.stdout)["error"]
    assert err["code"] == "UNAUTHENTICATED" and err["exit_code"] == 1


def test_unreachable_exit_3(tmp_path, repo):
    port = free_port()  # nothing listens there
    base = [str(PT2CTL), "--admin-address", f"127.0.0.1:{port}", "--address",
            f"127.0.0.1:{port}", "--token", "x", "--timeout", "10"]
    for args in (["models", "list"], ["weights", "status", "mlp"], ["weights", "swap", "mlp"],
                 ["weights", "push", "mlp", str(repo / f"seed{SEED}.safetensors")],
                 ["models", "load", "m", "m.pt2"]):
        start = time.monotonic()
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
        assert p.returncode == 3, f"{args}: exit {p.returncode}\n{p.stderr}"
        assert "UNAVAILABLE" in p.stderr and "cannot reach" in p.stderr, p.stderr
        assert time.monotonic() - start < 8, "a refused connection should fail fast"
    p = subprocess.run([str(PT2CTL), "--admin-address", "unix:" + str(tmp_path / "no.sock"),
                        "--token", "x", "weights", "status", "mlp"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 3, p.stderr


def test_usage_and_local_errors_exit_2(tmp_path, repo):
    port = free_port()  # unreachable: proves local checks happen before any RPC
    base = [str(PT2CTL), "--admin-address", f"127.0.0.1:{port}", "--token", "x"]

    def run(*args):
        return subprocess.run(base + list(args), capture_output=True, text=True, timeout=60)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((repo / f"seed{SEED}.safetensors").read_bytes()[:-100])
    empty = write_safetensors(tmp_path / "empty.safetensors", {})
    for f in (tmp_path / "missing.safetensors", garbage, truncated, empty, tmp_path):
        p = run("weights", "push", "mlp", str(f))
        assert p.returncode == 2, f"{f}: exit {p.returncode}\n{p.stderr}"
        assert p.stderr.startswith("pt2ctl: ") and "UNAVAILABLE" not in p.stderr, p.stderr
    for args in ((), ("weights",), ("bogus",), ("weights", "push", "mlp"),
                 ("weights", "push", "mlp", "f", "--chunk-size-mb", "0"),
                 ("weights", "status"), ("--timeout", "-1", "weights", "status", "mlp"),
                 ("models", "load", "x", "y", "--runners", "-2"),
                 ("models", "load", "x", "y", "--cpu-threads", "2000")):
        p = run(*args)
        assert p.returncode == 2, f"{args}: exit {p.returncode}\n{p.stderr}"
    p = subprocess.run([str(PT2CTL), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Exit codes:" in p.stdout and "3  the server is unreachable" \
        in p.stdout


# ------------------------------------------------------------------------- bad updates


def bad_files(tmp_path, repo) -> dict[str, Path]:
    w = seed_weights(repo)
    wrong_dtype = dict(w, **{"fc1.weight": w["fc1.weight"].astype(np.float64)})
    wrong_shape = dict(w, **{"fc1.weight": w["fc1.weight"][:, :15]})
    missing = {k: v for k, v in w.items() if k != "fc2.bias"}
    unknown = dict(w, **{"fc3.weight": np.zeros((2, 2), np.float32)})
    return {name: write_safetensors(tmp_path / f"{name}.safetensors", t)
            for name, t in (("wrong_dtype", wrong_dtype), ("wrong_shape", wrong_shape),
                            ("missing", missing), ("unknown", unknown))}


@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "after_swap"])
def test_bad_updates_via_pt2ctl_are_rejected(daemon, pb, repo, references, tmp_path, previous):
    if previous:  # seed7 active, initial PREVIOUS: rejected updates must keep both
        ok(run_ctl(daemon, "weights", "push", "mlp", str(repo / f"seed{SEED}.safetensors"),
                   "--swap"))
    active = f"seed{SEED}" if previous else "initial"
    before = status_json(daemon)
    expect = {"wrong_dtype": "'fc1.weight'", "wrong_shape": "'fc1.weight'",
              "missing": "missing 'fc2.bias'", "unknown": "'fc3.weight'"}
    for name, path in bad_files(tmp_path, repo).items():
        p = run_ctl(daemon, "weights", "push", "mlp", str(path), "--swap")
        refused(p, "INVALID_ARGUMENT")
        assert expect[name] in p.stderr, f"{name}: {p.stderr}"
        assert_serves(pb, daemon, references, active)
    after = status_json(daemon)
    assert after["active"] == before["active"]
    assert after["inactive"]["state"] == before["inactive"]["state"]
    assert after["inactive"]["version"] == before["inactive"]["version"]
    if previous:  # the rollback target survived
        ok(run_ctl(daemon, "weights", "rollback", "mlp"))
        assert_serves(pb, daemon, references, "initial")


def test_bad_streams_via_grpc_are_rejected(daemon, pb, repo, references):
    w = seed_weights(repo)
    version_before = run_mlp(pb, daemon, references["initial"][0])[0]
    assert version_before == "initial"
    full = update_messages(pb, w, "v-full", chunk=1024)
    assert len(full) > 4

    def call(msgs, metadata=AUTH):
        with admin_channel(daemon) as ch:
            with pytest.raises(grpc.RpcError) as e:
                admin_stub(pb, ch).UpdateConstantBuffer(iter(msgs), metadata=metadata, timeout=30)
        return e.value

    # Truncated: a header and only part of the chunks, then half-close.
    err = call(update_messages(pb, w, "v-trunc", drop_last=2))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    # Bad checksum.
    err = call(update_messages(pb, w, "v-sum", sha256="ab" * 32))
    assert err.code() == grpc.StatusCode.DATA_LOSS, err
    assert "checksum" in err.details()
    # A chunk for a tensor the header did not announce; a byte sent twice.
    ap = pb.admin_pb2
    err = call(full + [ap.UpdateConstantBufferRequest(chunk=ap.TensorChunk(
        name="nope", offset=0, data=b"\0" * 4))])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    err = call(full + [full[1]])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    # No header first; a second header; a chunk past the end of its tensor.
    err = call(full[1:])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    err = call(full[:1] + full[:1])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    err = call(full[:1] + [ap.UpdateConstantBufferRequest(chunk=ap.TensorChunk(
        name="fc2.bias", offset=30, data=b"\0" * 4))])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    # Server-side source plus chunks.
    err = call([ap.UpdateConstantBufferRequest(header=ap.UpdateHeader(
        model="mlp", version="s", server_path=f"seed{SEED}.safetensors")), full[1]])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    # Unknown model.
    bad_model = update_messages(pb, w, "v")
    bad_model[0].header.model = "nope"
    assert call(bad_model).code() == grpc.StatusCode.NOT_FOUND

    assert_serves(pb, daemon, references, "initial")
    st = status_json(daemon)
    assert st["inactive"]["state"] == "EMPTY", st
    # The writer slot was released every time: a good update goes through now.
    with admin_channel(daemon) as ch:
        resp = admin_stub(pb, ch).UpdateConstantBuffer(iter(full), metadata=AUTH, timeout=30)
    assert resp.version == "v-full" and resp.tensors == 4


def test_cancelled_stream_stages_nothing(daemon, pb, repo, references):
    w = seed_weights(repo)
    msgs = update_messages(pb, w, "v-cancel", chunk=512)
    sent, release = threading.Event(), threading.Event()

    def requests():
        yield from msgs[:len(msgs) // 2]
        sent.set()
        release.wait(20)  # keep the stream open until cancelled

    with admin_channel(daemon) as ch:
        fut = admin_stub(pb, ch).UpdateConstantBuffer.future(requests(), metadata=AUTH, timeout=30)
        assert sent.wait(10)
        time.sleep(0.3)  # let the server consume the chunks
        assert fut.cancel()
        release.set()
        with pytest.raises(grpc.FutureCancelledError):
            fut.result()
    # Nothing staged, writer released (poll briefly: the cancel reaches the server async).
    deadline = time.monotonic() + 5
    while True:
        p = run_ctl(daemon, "weights", "push", "mlp", str(repo / f"seed{SEED}.safetensors"))
        if p.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    ok(p)
    assert_serves(pb, daemon, references, "initial")
    ok(run_ctl(daemon, "weights", "swap", "mlp", "--expect", f"seed{SEED}"))
    assert_serves(pb, daemon, references, f"seed{SEED}")


def test_checksum_failure_keeps_rollback_target(daemon, pb, repo, references):
    """After a swap the inactive buffer is PREVIOUS; a DATA_LOSS update must not break serving.

    admin.proto (UpdateHeader.sha256) says a mismatch 'leaves the inactive buffer EMPTY', while
    runtime/constant_buffer_manager.h says a PREVIOUS set survives checksum failures. This test
    only pins what both agree on (active weights untouched) and records the state it sees.
    """
    ok(run_ctl(daemon, "weights", "push", "mlp", str(repo / f"seed{SEED}.safetensors"), "--swap"))
    w = seed_weights(repo)
    with admin_channel(daemon) as ch:
        with pytest.raises(grpc.RpcError) as e:
            admin_stub(pb, ch).UpdateConstantBuffer(
                iter(update_messages(pb, w, "v-sum", sha256="cd" * 32)), metadata=AUTH,
                timeout=30)
    assert e.value.code() == grpc.StatusCode.DATA_LOSS
    assert_serves(pb, daemon, references, f"seed{SEED}")
    st = status_json(daemon)
    assert st["inactive"]["state"] in ("EMPTY", "PREVIOUS"), st
    print(f"inactive buffer after a DATA_LOSS update: {st['inactive']['state']}")


def start_stalled_upload(d, pb, msgs, release: threading.Event):
    """An upload that sends the header and one chunk, then nothing until `release` is set
    (the connection stays open). Returns (channel, future); the caller closes the channel."""

    def requests():
        yield from msgs[:2]
        release.wait(60)

    ch = admin_channel(d)
    return ch, admin_stub(pb, ch).UpdateConstantBuffer.future(requests(), metadata=AUTH,
                                                              timeout=120)


def test_unload_is_not_blocked_by_an_idle_upload_stream(daemon, pb, repo):
    """An UpdateConstantBuffer stream that sent its header and then sits idle (a stalled or
    crashed pusher whose connection stays open) must not hold UnloadModel hostage.

    Observed: the stream holds a ModelHandle until it ends, so UnloadModel leaves the model
    UNLOADING (every inference request UNAVAILABLE) and does not return until the uploader
    half-closes or its deadline passes; the upload then even commits into the UNLOADING model
    and the uploader gets OK. Expected: unload finishes promptly (cancelling the upload).
    """
    release = threading.Event()
    ch, fut = start_stalled_upload(daemon, pb, update_messages(pb, seed_weights(repo), "idle"),
                                   release)
    try:
        time.sleep(0.5)
        start = time.monotonic()
        p = run_ctl(daemon, "--timeout", "10", "models", "unload", "mlp", timeout=60)
        took = time.monotonic() - start
        release.set()
        try:
            fut.result(timeout=30)
            upload = "OK"
        except grpc.RpcError as e:
            upload = str(e.code())
    finally:
        release.set()
        ch.close()
    assert p.returncode == 0, (f"unload with an idle upload stream open: exit {p.returncode} "
                               f"after {took:.1f} s: {p.stderr.strip()} (the upload then ended "
                               f"with {upload})")


def test_second_daemon_on_the_same_admin_address_fails_to_start(daemon, tmp_path, repo):
    """A second pt2serve configured with an admin address that is already in use must fail to
    start. Observed: gRPC's default SO_REUSEPORT lets it bind too, so both processes serve the
    port and the kernel splits connections between them: `pt2ctl weights push` may stage on one
    daemon and `pt2ctl weights swap` reach the other ("nothing staged"). The same holds for the
    inference address. Fix: GRPC_ARG_ALLOW_REUSEPORT = 0 on the server builders."""
    second = start_daemon(tmp_path / "second",
                          models=[{"name": "mlp", "path": str(repo / "mlp.pt2")}],
                          server={"admin_address": daemon.admin_url}, admin=True, metrics=False,
                          wait="none")
    try:
        try:
            code = second.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            code = None
        assert code not in (None, 0), (
            f"a second daemon with admin address {daemon.admin_url} (already in use) is still "
            f"running after 8 s; its log:\n{second.stderr_tail(1500)}")
    finally:
        second.kill()


# ------------------------------------------------------------- upload hardening (issue 14)


def raw_update(ch, pb, frames: list[bytes], timeout: float = 30):
    """UpdateConstantBuffer with each stream message given as raw bytes (so one can be garbage)."""
    call = ch.stream_unary("/pt2serve.v1.Admin/UpdateConstantBuffer",
                           request_serializer=lambda b: b,
                           response_deserializer=pb.admin_pb2.UpdateConstantBufferResponse.FromString)
    return call(iter(frames), metadata=AUTH, timeout=timeout)


# Field 1 (header), length-delimited, declaring far more bytes than follow: never parses.
UNPARSABLE = b"\x0a\xff\xff\xff\x0f\x01"


@pytest.mark.parametrize("where", ["after_complete_upload", "mid_upload"])
def test_unparsable_upload_message_ends_the_stream_with_an_error(daemon, pb, repo, references,
                                                                   where):
    """A stream message that does not parse must end the upload with INVALID_ARGUMENT and stage
    nothing, even when every announced byte already arrived (issue 14: it used to end like a
    half-close and stage)."""
    frames = [m.SerializeToString() for m in update_messages(pb, seed_weights(repo), "v-garbage")]
    if where == "after_complete_upload":
        frames.append(UNPARSABLE)
    else:
        frames.insert(len(frames) // 2, UNPARSABLE)
    with admin_channel(daemon) as ch:
        with pytest.raises(grpc.RpcError) as e:
            raw_update(ch, pb, frames)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    assert "does not parse" in e.value.details(), e.value.details()
    st = status_json(daemon)
    assert st["inactive"]["state"] == "EMPTY", st
    refused(run_ctl(daemon, "weights", "swap", "mlp"), "FAILED_PRECONDITION")
    assert_serves(pb, daemon, references, "initial")
    # The writer slot is free again.
    ok(run_ctl(daemon, "weights", "push", "mlp", str(repo / f"seed{SEED}.safetensors"), "--swap"))
    assert_serves(pb, daemon, references, f"seed{SEED}")


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def reversed_chunk(name: str, offset: int, data: bytes) -> bytes:
    """An UpdateConstantBufferRequest{chunk} with TensorChunk's fields written data, offset, name
    (legal protobuf that no library writes: the server's copy-free chunk scan must fall back)."""
    body = (b"\x1a" + _varint(len(data)) + data + b"\x10" + _varint(offset) +
            b"\x0a" + _varint(len(name)) + name.encode())
    return b"\x12" + _varint(len(body)) + body


def test_chunks_in_any_field_order_stage_the_same_weights(daemon, pb, repo, references):
    """Half the chunks with TensorChunk's fields reversed: the upload stages exactly the weights
    (checked by the server's SHA-256 and by serving the reference output)."""
    w = seed_weights(repo)
    msgs = update_messages(pb, w, f"seed{SEED}")
    msgs[0].header.sha256 = hashlib.sha256(b"".join(m.chunk.data for m in msgs[1:])).hexdigest()
    frames = [msgs[0].SerializeToString()]
    for i, m in enumerate(msgs[1:]):
        c = m.chunk
        frames.append(reversed_chunk(c.name, c.offset, c.data) if i % 2 else
                      m.SerializeToString())
    with admin_channel(daemon) as ch:
        resp = raw_update(ch, pb, frames)
    assert resp.version == f"seed{SEED}"
    ok(run_ctl(daemon, "weights", "swap", "mlp"))
    assert_serves(pb, daemon, references, f"seed{SEED}")


def test_stalled_upload_is_aborted_after_the_idle_timeout(tmp_path, pb, repo, references):
    """A client that sends the header and a few bytes and then goes silent (connection open)
    must not hold the model's writer slot: after server.upload_idle_timeout_ms the stream ends
    with ABORTED naming the timeout, nothing is staged, and the next push goes through."""
    d = start_daemon(tmp_path / "daemon",
                     models=[{"name": "mlp", "path": str(repo / "mlp.pt2"), "num_runners": 2}],
                     server={"model_repository": str(repo), "upload_idle_timeout_ms": 1000},
                     admin=True, metrics=False)
    release = threading.Event()
    ch, fut = start_stalled_upload(d, pb, update_messages(pb, seed_weights(repo), "v-stalled"),
                                   release)
    try:
        time.sleep(0.3)
        # While the upload is live (not idle yet), the slot is taken.
        refused(run_ctl(d, "weights", "push", "mlp", str(repo / f"seed{SEED}.safetensors")),
                "FAILED_PRECONDITION")
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            fut.result(timeout=20)
        took = time.monotonic() - start
        assert e.value.code() == grpc.StatusCode.ABORTED, e.value
        assert "upload_idle_timeout_ms" in e.value.details(), e.value.details()
        assert took < 5, f"the stalled upload ended only after {took:.1f} s"
        st = status_json(d)
        assert st["inactive"]["state"] == "EMPTY", st
        ok(run_ctl(d, "weights", "push", "mlp", str(repo / f"seed{SEED}.safetensors"), "--swap"))
        assert_serves(pb, d, references, f"seed{SEED}")
        # A stream that never sends its header is ended the same way.
        silent = admin_stub(pb, ch).UpdateConstantBuffer.future(
            iter(lambda: release.wait(60), True), metadata=AUTH, timeout=120)
        with pytest.raises(grpc.RpcError) as e:
            silent.result(timeout=20)
        assert e.value.code() == grpc.StatusCode.ABORTED, e.value
        assert "no header received" in e.value.details(), e.value.details()
    finally:
        release.set()
        ch.close()
        d.kill()


def write_overlapping_safetensors(path: Path, weights: dict[str, np.ndarray], alias: str,
                                  onto: str) -> Path:
    """A safetensors file of `weights` whose tensor `alias` points into `onto`'s bytes."""
    header, blob, offsets = {}, b"", {}
    for name, v in weights.items():
        data = np.ascontiguousarray(v).tobytes()
        offsets[name] = (len(blob), len(blob) + len(data))
        blob += data
    begin = offsets[onto][0]
    offsets[alias] = (begin, begin + weights[alias].nbytes)
    for name, v in weights.items():
        header[name] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": list(offsets[name])}
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob)
    return path


def test_overlapping_data_offsets_are_refused(daemon, pb, repo, references, tmp_path):
    """fc1.bias aliasing the first bytes of fc1.weight: pt2ctl refuses it locally (exit 2) and
    the server refuses it as a server-side file (INVALID_ARGUMENT), both naming the tensors."""
    w = seed_weights(repo)
    name = "overlap.safetensors"
    write_overlapping_safetensors(tmp_path / name, w, alias="fc1.bias", onto="fc1.weight")
    shutil.copyfile(tmp_path / name, repo / name)
    try:
        p = run_ctl(daemon, "weights", "push", "mlp", str(tmp_path / name))
        assert p.returncode == 2, p.stderr
        for text in ("'fc1.weight'", "'fc1.bias'", "overlapping"):
            assert text in p.stderr, p.stderr
        other = tmp_path / "elsewhere"  # no local copy: only the server checks the file
        other.mkdir()
        p = run_ctl(daemon, "weights", "push", "mlp", name, "--server-side", cwd=other)
        refused(p, "INVALID_ARGUMENT")
        for text in ("'fc1.weight'", "'fc1.bias'", "overlapping"):
            assert text in p.stderr, p.stderr
    finally:
        (repo / name).unlink()
    assert status_json(daemon)["inactive"]["state"] == "EMPTY"
    assert_serves(pb, daemon, references, "initial")
