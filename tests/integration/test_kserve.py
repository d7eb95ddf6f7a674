"""KServe v2 / Open Inference Protocol against the real daemon, driven by unmodified tritonclient.

Covers: server live/ready/metadata, per-model ready/metadata/config (Triton conventions), infer
on every zoo model (FP32, INT64 and FP16 inputs) against the exported reference outputs, typed
InferTensorContents (raw stub with tritonclient's own service_pb2), requested output subset /
order, the weights_version response parameter, ModelStatistics and RepositoryIndex.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc

from conftest import MAIN_RUNNERS, RPC_TIMEOUT, ZOO, assert_close, np_to_kserve_dtype

T = RPC_TIMEOUT

KSERVE_DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64"}
TRITON_TYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int64": mc.TYPE_INT64}


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()


def infer_inputs(ref_inputs: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    out = []
    for name, arr in ref_inputs.items():
        i = grpcclient.InferInput(name, list(arr.shape), np_to_kserve_dtype(arr))
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


# ------------------------------------------------------------------------------ server level


def test_server_live_ready(client):
    assert client.is_server_live(client_timeout=T) is True
    assert client.is_server_ready(client_timeout=T) is True


def test_server_metadata(client):
    md = client.get_server_metadata(client_timeout=T)
    assert md.name == "pt2serve"
    assert md.version, "server version must be non-empty"
    assert {"model_configuration", "statistics", "model_repository"} <= set(md.extensions)


def test_repository_index_lists_all_ready(client):
    index = client.get_model_repository_index(client_timeout=T)
    states = {m.name: m.state for m in index.models}
    assert states == {name: "READY" for name in ZOO}
    for m in index.models:
        assert m.version == "1"
        assert m.reason == ""


# ------------------------------------------------------------------------------- model level


@pytest.mark.parametrize("name", ZOO)
def test_model_ready(client, name):
    assert client.is_model_ready(name, client_timeout=T) is True
    assert client.is_model_ready(name, "1", client_timeout=T) is True


def test_unknown_model_not_ready(client):
    assert client.is_model_ready("no_such_model", client_timeout=T) is False


@pytest.mark.parametrize("name", ZOO)
def test_model_metadata(client, signatures, name):
    sig = signatures[name]
    md = client.get_model_metadata(name, client_timeout=T)
    assert md.name == name
    assert list(md.versions) == ["1"]
    assert md.platform == "pytorch_aoti"
    got_in = [(t.name, t.datatype, list(t.shape)) for t in md.inputs]
    want_in = [(s["name"], KSERVE_DTYPES[s["dtype"]], s["shape"]) for s in sig["inputs"]]
    assert got_in == want_in
    got_out = [(t.name, t.datatype, list(t.shape)) for t in md.outputs]
    want_out = [(s["name"], KSERVE_DTYPES[s["dtype"]], s["shape"]) for s in sig["outputs"]]
    assert got_out == want_out


@pytest.mark.parametrize("name", ZOO)
def test_model_config(client, signatures, name):
    sig = signatures[name]
    cfg = client.get_model_config(name, client_timeout=T).config
    assert cfg.name == name
    assert cfg.max_batch_size == 1024 == sig["max_batch_size"]
    # Triton convention: with max_batch_size > 0 dims exclude the batch dimension.
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        (s["name"], TRITON_TYPES[s["dtype"]], s["shape"][1:]) for s in sig["inputs"]]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        (s["name"], TRITON_TYPES[s["dtype"]], s["shape"][1:]) for s in sig["outputs"]]
    assert len(cfg.instance_group) == 1
    group = cfg.instance_group[0]
    assert group.count == MAIN_RUNNERS[name]
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["weights_version"].string_value == "initial"


# ------------------------------------------------------------------------------------ infer


@pytest.mark.parametrize("name", ZOO)
def test_infer_matches_reference(client, refs, signatures, name):
    ref = refs[name]
    result = client.infer(name, infer_inputs(ref["inputs"]), client_timeout=T)
    response = result.get_response()
    assert response.model_name == name
    # No requested outputs: all of them, in model (signature) order.
    assert [o.name for o in response.outputs] == [s["name"] for s in signatures[name]["outputs"]]
    for out_name, want in ref["outputs"].items():
        assert_close(f"{name}.{out_name}", result.as_numpy(out_name), want)
    assert response.parameters["weights_version"].string_param == "initial"


def test_infer_input_dtypes_covered(refs):
    """The zoo exercises FP32, INT64 (two_io) and FP16 (half) inputs."""
    dtypes = {np_to_kserve_dtype(a) for r in refs.values() for a in r["inputs"].values()}
    assert {"FP32", "INT64", "FP16"} <= dtypes


def test_infer_request_id_echoed(client, refs):
    result = client.infer("mlp", infer_inputs(refs["mlp"]["inputs"]), request_id="req-42",
                          client_timeout=T)
    assert result.get_response().id == "req-42"


def test_infer_batch_sizes(client, refs):
    """Batch 1 and a larger batch give the reference rows (row-wise independent model)."""
    x = refs["mlp"]["inputs"]["x"]
    y = refs["mlp"]["outputs"]["y"]
    one = client.infer("mlp", infer_inputs({"x": x[:1]}), client_timeout=T).as_numpy("y")
    assert_close("mlp batch 1", one, y[:1])
    big = np.concatenate([x] * 50)
    got = client.infer("mlp", infer_inputs({"x": big}), client_timeout=T).as_numpy("y")
    assert_close("mlp batch 150", got, np.concatenate([y] * 50))


@pytest.mark.parametrize("order", [["scores", "sum"], ["sum", "scores"], ["scores"], ["sum"]])
def test_requested_outputs_subset_and_order(client, refs, order):
    ref = refs["two_io"]
    outputs = [grpcclient.InferRequestedOutput(n) for n in order]
    result = client.infer("two_io", infer_inputs(ref["inputs"]), outputs=outputs,
                          client_timeout=T)
    response = result.get_response()
    assert [o.name for o in response.outputs] == order
    assert len(response.raw_output_contents) == len(order)
    for n in order:
        assert_close(f"two_io.{n}", result.as_numpy(n), ref["outputs"][n])


# ------------------------------------------------------------------- typed (non-raw) contents


def _typed_request(service_pb2, model: str, inputs: dict[str, np.ndarray]):
    req = service_pb2.ModelInferRequest(model_name=model)
    for name, arr in inputs.items():
        t = req.inputs.add(name=name, datatype=np_to_kserve_dtype(arr), shape=list(arr.shape))
        if arr.dtype == np.float32:
            t.contents.fp32_contents.extend(arr.ravel().tolist())
        elif arr.dtype == np.int64:
            t.contents.int64_contents.extend(arr.ravel().tolist())
        else:
            raise AssertionError(f"no typed field for {arr.dtype}")
    return req


def _raw_outputs(response) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64}
    assert len(response.raw_output_contents) == len(response.outputs)
    return {o.name: np.frombuffer(raw, dtypes[o.datatype]).reshape(list(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents)}


@pytest.mark.parametrize("name", ["mlp", "cnn", "two_io"])
def test_typed_contents_match_reference(kserve_raw, refs, signatures, name):
    service_pb2, stub = kserve_raw
    ref = refs[name]
    req = _typed_request(service_pb2, name, ref["inputs"])
    assert not req.raw_input_contents
    response = stub.ModelInfer(req, timeout=T)
    got = _raw_outputs(response)
    assert list(got) == [s["name"] for s in signatures[name]["outputs"]]
    for out_name, want in ref["outputs"].items():
        assert_close(f"{name}.{out_name} (typed)", got[out_name], want)
    assert response.parameters["weights_version"].string_param == "initial"


def test_typed_fp16_rejected_with_reason(kserve_raw, refs):
    """FP16 has no typed field: the server must ask for raw contents."""
    import grpc

    service_pb2, stub = kserve_raw
    x = refs["half"]["inputs"]["x"]
    req = service_pb2.ModelInferRequest(model_name="half")
    req.inputs.add(name="x", datatype="FP16", shape=list(x.shape))
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=T)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in e.value.details() and "raw" in e.value.details()


# ------------------------------------------------------------------------------- statistics


def _stats(client, name):
    (s,) = client.get_inference_statistics(name, client_timeout=T).model_stats
    assert s.name == name
    return s


def test_model_statistics_after_requests(client, refs):
    x = refs["two_io"]["inputs"]
    batch = next(iter(x.values())).shape[0]
    before = _stats(client, "two_io")
    n = 5
    for _ in range(n):
        client.infer("two_io", infer_inputs(x), client_timeout=T)
    after = _stats(client, "two_io")
    assert after.inference_count - before.inference_count == n * batch
    assert after.execution_count - before.execution_count == n
    inf_a, inf_b = after.inference_stats, before.inference_stats
    assert inf_a.success.count - inf_b.success.count == n
    assert inf_a.success.ns > inf_b.success.ns
    assert inf_a.fail.count == inf_b.fail.count
    assert inf_a.queue.count - inf_b.queue.count == n
    assert inf_a.queue.ns > inf_b.queue.ns
    assert inf_a.compute_infer.count - inf_b.compute_infer.count == n
    assert inf_a.compute_infer.ns > inf_b.compute_infer.ns
    assert inf_a.compute_input.ns > inf_b.compute_input.ns
    assert inf_a.compute_output.ns > inf_b.compute_output.ns
    assert after.last_inference > 0 and after.last_inference >= before.last_inference


def test_model_statistics_all_models(client):
    names = {s.name for s in client.get_inference_statistics(client_timeout=T).model_stats}
    assert names == set(ZOO)


def test_model_statistics_compute_counts_consistent(client, refs):
    """Triton semantics: compute_input / compute_infer / compute_output count the successful
    executions, so their counts are always equal (perf_analyzer aborts with "Server side
    statistics compute counts must be the same." otherwise), and a failed request adds to
    `fail` only."""
    x = refs["mlp"]["inputs"]["x"]
    client.infer("mlp", infer_inputs({"x": x}), client_timeout=T)
    before = _stats(client, "mlp").inference_stats
    bad = grpcclient.InferInput("x", [3, 15], "FP32")  # wrong shape: INVALID_ARGUMENT
    bad.set_data_from_numpy(np.ones((3, 15), np.float32))
    with pytest.raises(Exception) as e:
        client.infer("mlp", [bad], client_timeout=T)
    assert "INVALID_ARGUMENT" in str(e.value.status())
    client.infer("mlp", infer_inputs({"x": x}), client_timeout=T)
    after = _stats(client, "mlp").inference_stats
    assert after.fail.count - before.fail.count == 1
    assert after.success.count - before.success.count == 1
    deltas = {k: getattr(after, k).count - getattr(before, k).count
              for k in ("compute_input", "compute_infer", "compute_output", "queue")}
    assert deltas == {"compute_input": 1, "compute_infer": 1, "compute_output": 1, "queue": 1}
    counts = {k: getattr(after, k).count
              for k in ("compute_input", "compute_infer", "compute_output")}
    assert len(set(counts.values())) == 1, f"compute counts differ: {counts}"


# ------------------------------------------------------------------------------ streaming


def test_stream_infer_answers_every_request(server, refs):
    """ModelStreamInfer: every request answered on the stream (completion order), outputs
    equal the reference, a bad request gets an error on the stream and the stream goes on."""
    import queue

    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        ids = []
        for i, name in enumerate(["mlp", "cnn", "two_io", "half"] * 3):
            rid = f"s{i}-{name}"
            ids.append((rid, name))
            client.async_stream_infer(name, infer_inputs(refs[name]["inputs"]), request_id=rid)
        bad = grpcclient.InferInput("x", [1, 15], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 15), np.float32))
        client.async_stream_infer("mlp", [bad], request_id="bad")
        client.async_stream_infer("mlp", infer_inputs(refs["mlp"]["inputs"]), request_id="after")
        got = {}
        errors = {}
        for _ in range(len(ids) + 2):
            result, error = results.get(timeout=T)
            if error is not None:
                errors[len(errors)] = str(error)
            else:
                got[result.get_response().id] = result
    finally:
        client.stop_stream()
        client.close()
    assert len(errors) == 1 and "input 'x'" in errors[0], errors
    assert set(got) == {rid for rid, _ in ids} | {"after"}
    for rid, name in ids + [("after", "mlp")]:
        for out_name, want in refs[name]["outputs"].items():
            assert_close(f"{rid}.{out_name}", got[rid].as_numpy(out_name), want)
        assert got[rid].get_response().parameters["weights_version"].string_param == "initial"
