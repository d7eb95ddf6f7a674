"""Packages made by plain `torch._inductor.aoti_compile_and_package` (no pt2serve exporter, no
pt2serve metadata, no runtime constant folding), served with no re-export.

Packages: tests/support/plain_packages.py (block: transformer-style, two inputs of different
dtypes sharing batch and sequence dims, a tuple of three outputs incl. int64; mlp: static shapes,
keyword input, dict outputs, fc2.bias folded at compile time). Every output is compared with the
eager module rebuilt from the same seed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from conftest import BUILD_DIR, REPO, RPC_TIMEOUT, assert_close, start_daemon

sys.path.insert(0, str(REPO / "tests" / "support"))
import plain_packages as plain  # noqa: E402
from make_fixture_packages import rewrite_metadata  # noqa: E402

PT2CTL = BUILD_DIR / "tools" / "pt2ctl" / "pt2ctl"
BLOCK_IN = ("input__0", "input__1")
BLOCK_OUT = ("output__0", "output__1", "output__2")
# The block again, with the names and batch bound declared in the config (Triton-style).
DECLARED = {
    "inputs": [{"name": "tokens", "dtype": "int64", "shape": [-1, -1]},
               {"name": "mask", "dtype": "float32", "shape": [-1, -1]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, -1, 4]},
                {"name": "best", "dtype": "int64", "shape": [-1, -1]},
                {"name": "pooled", "dtype": "float32", "shape": [-1, -1]}],
    "max_batch_size": 8,
}


@pytest.fixture(scope="module")
def plain_dir() -> Path:
    env = os.environ.get("PT2SERVE_PLAIN_DIR")
    if env:
        return Path(env)
    proc = subprocess.run([sys.executable, str(REPO / "tests/support/plain_packages.py")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def repo(tmp_path_factory, plain_dir) -> Path:
    """Model repository: the plain packages, their weights, and a CUDA-claiming copy of mlp."""
    root = tmp_path_factory.mktemp("plain_repo")
    for f in plain_dir.iterdir():
        if f.is_file():
            shutil.copy(f, root / f.name)
    rewrite_metadata(str(plain_dir / "mlp.pt2"), str(root / "mlp_cuda.pt2"),
                     lambda m: m.update(AOTI_DEVICE_KEY="cuda"))
    return root


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, repo):
    models = [{"name": "block", "path": str(repo / "block.pt2"), "num_runners": 2},
              {"name": "mlp", "path": str(repo / "mlp.pt2")},
              {"name": "block_named", "path": str(repo / "block.pt2"), **DECLARED}]
    d = start_daemon(tmp_path_factory.mktemp("plain_daemon"), models=models, admin=True,
                     server={"model_repository": str(repo)})
    try:
        yield d
    finally:
        code = d.stop()
        assert code == 0, d.stderr_tail()


@pytest.fixture(scope="module")
def client(daemon):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(daemon.url)
    yield c
    c.close()


def infer(client, model, arrays: dict[str, np.ndarray], outputs=None):
    import tritonclient.grpc as grpcclient

    dt = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32",
          np.dtype(np.float64): "FP64"}
    inputs = []
    for name, arr in arrays.items():
        i = grpcclient.InferInput(name, list(arr.shape), dt[arr.dtype])
        i.set_data_from_numpy(np.ascontiguousarray(arr))
        inputs.append(i)
    req_out = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, inputs, outputs=req_out, client_timeout=RPC_TIMEOUT)


def eager_block(seed=0, batch=2, seq=5, data_seed=1):
    tokens, mask = plain.block_inputs(batch, seq, data_seed)
    with torch.no_grad():
        outs = plain.build("block", seed)(tokens, mask)
    return tokens.numpy(), mask.numpy(), [o.numpy() for o in outs]


def check_block(result, names, eager_outs):
    logits, best, pooled = (result.as_numpy(n) for n in names)
    assert_close(names[0], logits, eager_outs[0])
    assert_close(names[2], pooled, eager_outs[2])
    assert best.dtype == np.int64 and best.shape == eager_outs[1].shape
    # argmax may differ only where the two best eager logits tie within float noise.
    top2 = np.sort(eager_outs[0], axis=-1)[..., -2:]
    differs = best != eager_outs[1]
    assert np.all(top2[..., 1][differs] - top2[..., 0][differs] < 1e-4), names[1]


@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 5), (3, 32), (64, 7)])
def test_block_matches_eager(client, batch, seq):
    tokens, mask, want = eager_block(batch=batch, seq=seq)
    r = infer(client, "block", {"input__0": tokens, "input__1": mask})
    check_block(r, BLOCK_OUT, want)


def test_block_declared_names_match_eager(client):
    tokens, mask, want = eager_block(batch=4, seq=9)
    r = infer(client, "block_named", {"tokens": tokens, "mask": mask})
    check_block(r, ("logits", "best", "pooled"), want)
    # Requesting a subset by the declared names.
    r = infer(client, "block_named", {"tokens": tokens, "mask": mask}, outputs=["best"])
    assert [o.name for o in r.get_response().outputs] == ["best"]


def test_mlp_keyword_input_and_dict_outputs(client):
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = plain.build("mlp")(x)
    r = infer(client, "mlp", {"x": x.numpy()})
    assert [o.name for o in r.get_response().outputs] == ["y", "norm"]
    assert_close("y", r.as_numpy("y"), want["y"].numpy())
    assert_close("norm", r.as_numpy("norm"), want["norm"].numpy())


def test_metadata_and_config(client):
    md = client.get_model_metadata("block")
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [
        ("input__0", "INT64", [-1, -1]), ("input__1", "FP32", [-1, -1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [
        ("output__0", "FP32", [-1, -1, 4]), ("output__1", "INT64", [-1, -1]),
        ("output__2", "FP32", [-1, -1])]
    assert client.get_model_config("block").config.max_batch_size == 64
    assert client.get_model_config("block_named").config.max_batch_size == 8
    assert client.get_model_config("mlp").config.max_batch_size == 0
    md = client.get_model_metadata("mlp")
    assert [(t.name, list(t.shape)) for t in md.inputs] == [("x", [4, 16])]
    assert [(t.name, list(t.shape)) for t in md.outputs] == [("y", [4, 8]), ("norm", [4])]


T = np.zeros((2, 5), np.int64)
M = np.ones((2, 5), np.float32)
WRONG = [
    # model, inputs, fragments the INVALID_ARGUMENT message must contain
    ("block", {"input__0": T.astype(np.int32), "input__1": M}, ["'input__0'", "int64", "int32"]),
    ("block", {"input__0": T, "input__1": M.astype(np.float64)}, ["'input__1'", "float32"]),
    ("block", {"input__0": T.reshape(10), "input__1": M}, ["'input__0'", "rank 2"]),
    ("block", {"input__0": np.zeros((2, 33), np.int64), "input__1": np.ones((2, 33), np.float32)},
     ["'input__0'", "dim 1", "33", "1..32"]),
    ("block", {"input__0": np.zeros((2, 0), np.int64), "input__1": np.ones((2, 0), np.float32)},
     ["'input__0'", "dim 1", "1..32"]),
    ("block", {"input__0": np.zeros((65, 3), np.int64), "input__1": np.ones((65, 3), np.float32)},
     ["'input__0'", "dim 0", "65", "1..64"]),
    ("block", {"input__0": np.zeros((2, 5), np.int64), "input__1": np.ones((2, 6), np.float32)},
     ["'input__0'", "'input__1'", "dim 1", "5", "6"]),
    ("block", {"input__0": np.zeros((2, 5), np.int64), "input__1": np.ones((3, 5), np.float32)},
     ["input__1", "3"]),
    ("block_named", {"tokens": np.zeros((9, 5), np.int64), "mask": np.ones((9, 5), np.float32)},
     ["batch size 9", "1..8"]),
    ("mlp", {"x": np.zeros((5, 16), np.float32)}, ["'x'", "dim 0 must be 4"]),
    ("mlp", {"x": np.zeros((4, 15), np.float32)}, ["'x'", "dim 1 must be 16"]),
]


@pytest.mark.parametrize("model,arrays,fragments", WRONG,
                         ids=[f"{w[0]}-{i}" for i, w in enumerate(WRONG)])
def test_wrong_inputs_are_invalid_argument(daemon, client, model, arrays, fragments):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        infer(client, model, arrays)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value.message()
    for f in fragments:
        assert f in e.value.message(), (f, e.value.message())
    assert daemon.alive()


def test_get_model_reports_derived_signature_and_constants(daemon, pb):
    with daemon.channel() as ch:
        stub = pb.inference_pb2_grpc.InferenceStub(ch)
        info = stub.GetModel(pb.inference_pb2.GetModelRequest(name="mlp"), timeout=RPC_TIMEOUT)
        assert info.signature_source == "derived from the package"
        assert not info.runtime_constant_folding
        assert [c.name for c in info.constants] == ["fc1.bias", "fc1.weight", "fc2.weight"]
        block = stub.GetModel(pb.inference_pb2.GetModelRequest(name="block"), timeout=RPC_TIMEOUT)
        tok = block.inputs[0]
        assert [(d.min, d.max) for d in tok.dims] == [(1, 64), (1, 32)]
        assert tok.dims[1].symbol and tok.dims[1].symbol == block.inputs[1].dims[1].symbol
        named = stub.GetModel(pb.inference_pb2.GetModelRequest(name="block_named"),
                              timeout=RPC_TIMEOUT)
        assert named.signature_source == "declared in the model config"
        assert [i.name for i in named.inputs] == ["tokens", "mask"]


def run_ctl(d, *args):
    cmd = [str(PT2CTL), "--admin-address", d.admin_url, "--address", d.url,
           "--token-file", str(d.workdir / "admin.token"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not PT2CTL.is_file(), reason="pt2ctl not built")
def test_weights_push_folded_constant_refused_rest_swaps(daemon, client, repo, tmp_path):
    from safetensors.torch import load_file, save_file

    seed7 = repo / "mlp.seed7.weights.safetensors"
    p = run_ctl(daemon, "weights", "push", "mlp", str(seed7))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "INVALID_ARGUMENT" in p.stderr and "'fc2.bias'" in p.stderr, p.stderr
    assert "not an updatable constant" in p.stderr, p.stderr

    updatable = {k: v for k, v in load_file(str(seed7)).items() if k != "fc2.bias"}
    save_file(updatable, str(tmp_path / "mlp-v7.safetensors"))
    p = run_ctl(daemon, "weights", "push", "mlp", str(tmp_path / "mlp-v7.safetensors"),
                "--version", "v7", "--swap")
    assert p.returncode == 0, p.stdout + p.stderr
    # Expected: seed-7 weights, but fc2.bias stays the compiled-in (seed 0) value.
    module = plain.build("mlp", 7)
    with torch.no_grad():
        module.fc2.bias.copy_(plain.build("mlp", 0).fc2.bias)
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
        want = module(x)
    r = infer(client, "mlp", {"x": x.numpy()})
    assert r.get_response().parameters["weights_version"].string_param == "v7"
    assert_close("y", r.as_numpy("y"), want["y"].numpy())
    p = run_ctl(daemon, "weights", "rollback", "mlp")
    assert p.returncode == 0, p.stderr


def load(daemon, pb, **fields):
    with grpc.insecure_channel(daemon.admin_url) as ch:
        stub = pb.admin_pb2_grpc.AdminStub(ch)
        md = (("authorization", f"Bearer {daemon.token}"),)
        return stub.LoadModel(pb.admin_pb2.LoadModelRequest(**fields), metadata=md,
                              timeout=120)


def test_cuda_package_on_cpu_host_is_failed_precondition(daemon, pb):
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(grpc.RpcError) as e:
        load(daemon, pb, name="mlp_cuda", package_path="mlp_cuda.pt2")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
    assert "cuda" in e.value.details().lower()
    assert daemon.alive()


def spec(pb, name, dtype, shape):
    dtypes = {"int64": pb.inference_pb2.DT_INT64, "float32": pb.inference_pb2.DT_FLOAT32,
              "int32": pb.inference_pb2.DT_INT32}
    return pb.inference_pb2.TensorSpec(name=name, dtype=dtypes[dtype], shape=shape)


def test_admin_load_with_declared_signature(daemon, pb, client):
    outs = [spec(pb, o["name"], o["dtype"], o["shape"]) for o in DECLARED["outputs"]]
    ins = [spec(pb, "ids", "int64", [-1, -1]), spec(pb, "m", "float32", [-1, -1])]
    load(daemon, pb, name="block_admin", package_path="block.pt2", inputs=ins, outputs=outs,
         max_batch_size=4)
    tokens, mask, want = eager_block(batch=4, seq=3)
    check_block(infer(client, "block_admin", {"ids": tokens, "m": mask}),
                ("logits", "best", "pooled"), want)

    # Narrower ranges declared per dim are enforced; wider ones are a load error.
    narrow = [pb.inference_pb2.TensorSpec(name="ids", dtype=pb.inference_pb2.DT_INT64,
                                          shape=[-1, -1], dims=[{"min": 1, "max": -1},
                                                                {"min": 1, "max": 4}]), ins[1]]
    load(daemon, pb, name="block_narrow", package_path="block.pt2", inputs=narrow, outputs=outs)
    tokens, mask, want = eager_block(batch=2, seq=4)
    check_block(infer(client, "block_narrow", {"ids": tokens, "m": mask}),
                ("logits", "best", "pooled"), want)
    from tritonclient.utils import InferenceServerException
    tokens, mask, _ = eager_block(batch=2, seq=5)
    with pytest.raises(InferenceServerException) as e:
        infer(client, "block_narrow", {"ids": tokens, "m": mask})
    assert "input 'ids': dim 1" in e.value.message() and "1..4" in e.value.message()
    wide = [pb.inference_pb2.TensorSpec(name="ids", dtype=pb.inference_pb2.DT_INT64,
                                        shape=[-1, -1], dims=[{"min": 1, "max": -1},
                                                              {"min": 1, "max": 100}]), ins[1]]

    contradictions = [
        (wide, outs, "range is wider than the package's (1..32)"),
        ([spec(pb, "ids", "int32", [-1, -1]), ins[1]], outs, "dtype int32, the package takes int64"),
        ([ins[0], spec(pb, "m", "float32", [-1, -1, 2])], outs, "rank 2"),
        (ins[:1], outs, "1 inputs, the package takes 2"),
        (ins, outs[:2], "2 outputs, the package returns 3"),
        (ins, [outs[0], spec(pb, "best", "int32", [-1, -1]), outs[2]],
         "dtype int32, the package returns int64"),
    ]
    for i, (bad_in, bad_out, fragment) in enumerate(contradictions):
        with pytest.raises(grpc.RpcError) as e:
            load(daemon, pb, name=f"bad{i}", package_path="block.pt2", inputs=bad_in,
                 outputs=bad_out)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert fragment in e.value.details(), (fragment, e.value.details())
    assert daemon.alive()


@pytest.mark.skipif(not PT2CTL.is_file(), reason="pt2ctl not built")
def test_pt2ctl_models_inspect(plain_dir, tmp_path):
    import json

    p = subprocess.run([str(PT2CTL), "models", "inspect", str(plain_dir / "block.pt2")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "derived from the package, max_batch_size 64" in p.stdout
    assert "dim 0: 1..64" in p.stdout and "dim 1: 1..32" in p.stdout
    p = subprocess.run([str(PT2CTL), "--json", "models", "inspect", str(plain_dir / "mlp.pt2")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert j["device"] == "cpu" and j["metadata"]["AOTI_CPU_ISA"]
    assert j["inputs"] == [{"name": "x", "dtype": "float32", "shape": [4, 16],
                            "dims": [{"min": 4, "max": 4}, {"min": 16, "max": 16}]}]
    assert [o["name"] for o in j["outputs"]] == ["y", "norm"] and not j["outputs_known"]
    assert j["runtime_constant_folding"] is False
    assert {c["name"]: (c["bytes"], c["updatable"]) for c in j["constants"]} == {
        "fc1.weight": (2048, True), "fc1.bias": (128, True), "fc2.weight": (1024, True)}
    bad = tmp_path / "bad.pt2"
    bad.write_text("not a zip")
    p = subprocess.run([str(PT2CTL), "models", "inspect", str(bad)], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "not a .pt2 package" in p.stderr, p.stderr


@pytest.mark.skipif(not PT2CTL.is_file(), reason="pt2ctl not built")
def test_pt2ctl_load_declared_and_weights_status(daemon, client):
    p = run_ctl(daemon, "models", "load", "block_ctl", "block.pt2",
                "--input", "ids:int64:-1,-1", "--input", "m:float32:-1,-1",
                "--output", "logits:float32:-1,-1,4", "--output", "best:int64:-1,-1",
                "--output", "pooled:float32:-1,-1", "--max-batch", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    md = client.get_model_metadata("block_ctl")
    assert [t.name for t in md.inputs] == ["ids", "m"]
    assert client.get_model_config("block_ctl").config.max_batch_size == 2
    p = run_ctl(daemon, "models", "load", "block_bad", "block.pt2",
                "--input", "ids:int64:-1,-1", "--input", "m:float32:-1",
                "--output", "logits:float32:-1,-1,4", "--output", "best:int64:-1,-1",
                "--output", "pooled:float32:-1,-1")
    assert p.returncode == 1 and "INVALID_ARGUMENT" in p.stderr and "rank 2" in p.stderr, p.stderr
    p = run_ctl(daemon, "models", "load", "x", "block.pt2", "--input", "ids:int65:-1")
    assert p.returncode == 2 and "unknown dtype 'int65'" in p.stderr, p.stderr

    p = run_ctl(daemon, "weights", "status", "mlp")
    assert p.returncode == 0, p.stderr
    assert "updatable constants (3, " in p.stdout and "fc1.bias, fc1.weight, fc2.weight" in p.stdout
    assert "compiled without runtime constant folding" in p.stdout, p.stdout
