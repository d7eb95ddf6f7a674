"""pt2serve.v1.Inference (native API) against the real daemon, with stubs generated from our
proto/pt2serve/v1/*.proto: Run on every zoo model vs the reference outputs, response metadata
(weights_version, request_id, queue/compute times), ListModels and GetModel.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import MAIN_RUNNERS, RPC_TIMEOUT, ZOO, assert_close

T = RPC_TIMEOUT


@pytest.fixture(scope="module")
def native(server, pb):
    ch = server.channel()
    yield pb.inference_pb2, pb.inference_pb2_grpc.InferenceStub(ch)
    ch.close()


def dtype_maps(pb2):
    to_proto = {np.dtype(np.float32): pb2.DT_FLOAT32, np.dtype(np.float16): pb2.DT_FLOAT16,
                np.dtype(np.int64): pb2.DT_INT64}
    from_proto = {v: k for k, v in to_proto.items()}
    return to_proto, from_proto


SIG_DTYPES = {"float32": "DT_FLOAT32", "float16": "DT_FLOAT16", "int64": "DT_INT64"}


def make_tensor(pb2, name: str, arr: np.ndarray):
    to_proto, _ = dtype_maps(pb2)
    arr = np.ascontiguousarray(arr)
    return pb2.Tensor(name=name, dtype=to_proto[arr.dtype], shape=list(arr.shape),
                      data=arr.tobytes())


def decode(pb2, t) -> np.ndarray:
    _, from_proto = dtype_maps(pb2)
    return np.frombuffer(t.data, from_proto[t.dtype]).reshape(list(t.shape))


def run_request(pb2, model, inputs: dict[str, np.ndarray], outputs=(), request_id=""):
    return pb2.RunRequest(model=model, inputs=[make_tensor(pb2, n, a) for n, a in inputs.items()],
                          outputs=list(outputs), request_id=request_id)


@pytest.mark.parametrize("name", ZOO)
def test_run_matches_reference(native, refs, signatures, name):
    pb2, stub = native
    ref = refs[name]
    resp = stub.Run(run_request(pb2, name, ref["inputs"], request_id=f"native-{name}"),
                    timeout=T)
    assert resp.model == name
    assert resp.request_id == f"native-{name}"
    assert resp.weights_version == "initial"
    assert resp.queue_time_us >= 0
    assert resp.compute_time_us > 0
    assert [o.name for o in resp.outputs] == [s["name"] for s in signatures[name]["outputs"]]
    for out in resp.outputs:
        assert list(out.shape) == list(ref["outputs"][out.name].shape)
        assert_close(f"{name}.{out.name}", decode(pb2, out), ref["outputs"][out.name])


def test_run_outputs_subset_and_order(native, refs):
    pb2, stub = native
    ref = refs["two_io"]
    for order in (["scores", "sum"], ["scores"]):
        resp = stub.Run(run_request(pb2, "two_io", ref["inputs"], outputs=order), timeout=T)
        assert [o.name for o in resp.outputs] == order
        for out in resp.outputs:
            assert_close(f"two_io.{out.name}", decode(pb2, out), ref["outputs"][out.name])


def test_list_models(native):
    pb2, stub = native
    resp = stub.ListModels(pb2.ListModelsRequest(), timeout=T)
    names = [m.name for m in resp.models]
    assert names == sorted(ZOO)  # sorted by name
    for m in resp.models:
        assert m.state == pb2.READY, m
        assert m.reason == ""
        assert m.weights_version == "initial"


@pytest.mark.parametrize("name", ZOO)
def test_get_model(native, signatures, model_dir, name):
    pb2, stub = native
    info = stub.GetModel(pb2.GetModelRequest(name=name), timeout=T)
    sig = signatures[name]
    assert info.name == name
    assert info.state == pb2.READY
    assert info.reason == ""
    assert info.device == "cpu"
    assert info.num_runners == MAIN_RUNNERS[name]
    assert info.max_queue_size == 64  # the config default
    assert info.max_batch_size == sig["max_batch_size"]
    assert info.weights_version == "initial"
    assert info.package_path.endswith(f"{name}.pt2")
    assert [(t.name, pb2.DataType.Name(t.dtype), list(t.shape)) for t in info.inputs] == [
        (s["name"], SIG_DTYPES[s["dtype"]], s["shape"]) for s in sig["inputs"]]
    assert [(t.name, pb2.DataType.Name(t.dtype), list(t.shape)) for t in info.outputs] == [
        (s["name"], SIG_DTYPES[s["dtype"]], s["shape"]) for s in sig["outputs"]]
    # Constants: exactly the exported weights (NAME.weights.safetensors), names and shapes.
    weights = load_file(str(model_dir / f"{name}.weights.safetensors"))
    got = {c.name: (pb2.DataType.Name(c.dtype), list(c.shape)) for c in info.constants}
    want = {k: (SIG_DTYPES[str(v.dtype)], list(v.shape)) for k, v in weights.items()}
    assert got == want
    assert len(info.constants) == len(got), "duplicate constant names"
    assert info.constants_bytes == sum(v.nbytes for v in weights.values())


def test_get_model_unknown_is_not_found(native):
    import grpc

    pb2, stub = native
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModel(pb2.GetModelRequest(name="no_such_model"), timeout=T)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in e.value.details()
