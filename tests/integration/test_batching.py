"""Dynamic batching through the REAL daemon, driven by tritonclient and grpcio.

* concurrent requests to a batched model are joined into fewer container calls (ModelStatistics
  execution_count < inference_count, batch_stats with sizes > 1, RunResponse.batch_size, the
  pt2serve_batch_size histogram) and every response equals what the same request gets from the
  same package served without batching;
* ModelConfig reports the batcher as Triton does (max_batch_size, dynamic_batching);
* a request larger than max_batch_size or naming an unknown priority is INVALID_ARGUMENT;
* with isolation: process, a poison request that crashes the worker mid-batch fails alone: the
  other requests of its batch are re-run and succeed;
* a config asking for batching on a package without a dynamic batch dim fails with the reason.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import start_daemon, wait_for

DELAY_US = 5000  # long enough that concurrent requests on this 2-core VM meet in one batch


def x_input(x: np.ndarray) -> list:
    a = grpcclient.InferInput("x", list(x.shape), "FP32")
    a.set_data_from_numpy(x)
    return [a]


@pytest.fixture(scope="module")
def batched(tmp_path_factory, model_dir, daemon_path):
    d = start_daemon(tmp_path_factory.mktemp("batched"), models=[
        {"name": "mlp_batched", "path": str(model_dir / "mlp.pt2"), "num_runners": 1,
         "dynamic_batching": {"max_batch_size": 16, "max_queue_delay_us": DELAY_US,
                              "priority_levels": 2}},
        {"name": "mlp", "path": str(model_dir / "mlp.pt2"), "num_runners": 1},
        {"name": "tiny_lm", "path": str(model_dir / "tiny_lm.pt2"), "num_runners": 1,
         "isolation": "process",
         "dynamic_batching": {"max_batch_size": 8, "max_queue_delay_us": 20000}},
    ], admin=True, metrics=True)
    try:
        yield d
    finally:
        d.stop_clean()


def test_concurrent_requests_share_batches_with_unbatched_results(batched):
    client = grpcclient.InferenceServerClient(batched.url)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + i % 3, 16)).astype(np.float32) for i in range(48)]
    with cf.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda x: client.infer("mlp_batched", x_input(x)), xs))
    for x, result in zip(xs, got):
        alone = client.infer("mlp", x_input(x)).as_numpy("y")
        np.testing.assert_allclose(result.as_numpy("y"), alone, rtol=1e-5, atol=1e-6)
        assert result.get_response().parameters["weights_version"].string_param == "initial"

    stats = client.get_inference_statistics("mlp_batched", as_json=True)["model_stats"][0]
    rows = sum(x.shape[0] for x in xs)
    assert int(stats["inference_count"]) == rows
    executions = int(stats["execution_count"])
    assert executions < len(xs), stats
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    assert sum(sizes.values()) == executions
    assert sum(size * n for size, n in sizes.items()) == rows
    assert max(sizes) > 3

    metrics = urllib.request.urlopen(batched.metrics_url, timeout=5).read().decode()
    m = re.search(r'^pt2serve_batch_size_count\{model="mlp_batched"\} (\S+)$', metrics, re.M)
    assert m and float(m.group(1)) == executions


def test_model_config_reports_the_batcher(batched):
    client = grpcclient.InferenceServerClient(batched.url)
    config = client.get_model_config("mlp_batched", as_json=True)["config"]
    assert int(config["max_batch_size"]) == 16
    db = config["dynamic_batching"]
    assert int(db["max_queue_delay_microseconds"]) == DELAY_US
    assert int(db["priority_levels"]) == 2
    assert "dynamic_batching" not in client.get_model_config("mlp", as_json=True)["config"]


def test_native_run_reports_batch_size_and_takes_priority(batched, pb):
    inference_pb2, inference_grpc = pb.inference_pb2, pb.inference_pb2_grpc
    stub = inference_grpc.InferenceStub(batched.channel())

    def run(priority: int):
        x = np.full((1, 16), 0.25, np.float32)
        req = inference_pb2.RunRequest(model="mlp_batched", priority=priority)
        req.inputs.add(name="x", dtype=inference_pb2.DT_FLOAT32, shape=[1, 16], data=x.tobytes())
        return stub.Run(req, timeout=30)

    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(run, [1, 2] * 8))
    assert all(r.batch_size >= 1 for r in responses)
    assert max(r.batch_size for r in responses) > 1
    with pytest.raises(Exception) as err:
        run(3)
    assert "INVALID_ARGUMENT" in str(err.value) and "priority 3" in str(err.value)


def test_request_larger_than_max_batch_is_invalid(batched):
    client = grpcclient.InferenceServerClient(batched.url)
    with pytest.raises(InferenceServerException) as err:
        client.infer("mlp_batched", x_input(np.zeros((17, 16), np.float32)))
    assert "INVALID_ARGUMENT" in str(err.value.status())
    assert "max_batch_size 16" in str(err.value)
    # Still serving.
    client.infer("mlp_batched", x_input(np.zeros((2, 16), np.float32)))


def test_poison_request_fails_alone_in_its_batch(batched, model_dir):
    from safetensors.numpy import load_file
    ref = load_file(str(model_dir / "tiny_lm.reference.safetensors"))
    tokens, logits = ref["input.tokens"], ref["output.logits"]
    poison = np.full_like(tokens, 150)  # ids >= 100: out of the embedding's range
    client = grpcclient.InferenceServerClient(batched.url)
    requests = [tokens] * 3 + [poison] + [tokens] * 3

    def send(t):
        try:
            return client.infer("tiny_lm", _lm(t), client_timeout=60)
        except InferenceServerException as e:
            return e

    with cf.ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(send, requests))
    for i, r in enumerate(results):
        if i == 3:
            assert isinstance(r, InferenceServerException), "the poison request succeeded"
            assert "tiny_lm" in str(r)
        else:
            assert not isinstance(r, InferenceServerException), f"request {i}: {r}"
            np.testing.assert_allclose(r.as_numpy("logits"), logits, rtol=1e-4, atol=1e-4)
    assert batched.alive()


def test_batching_on_a_static_package_fails_with_the_reason(tmp_path, model_dir):
    plain = os.environ.get("PT2SERVE_PLAIN_DIR")
    if not plain:
        pytest.skip("PT2SERVE_PLAIN_DIR is not set (scripts/setup.sh sets it)")
    d = start_daemon(tmp_path, models=[
        {"name": "static", "path": os.path.join(plain, "mlp.pt2"), "dynamic_batching": {}},
        {"name": "mlp", "path": str(model_dir / "mlp.pt2")}], wait="live")
    try:
        client = grpcclient.InferenceServerClient(d.url)

        def index():
            return {m["name"]: m
                    for m in client.get_model_repository_index(as_json=True)["models"]}

        wait_for(lambda: all(m.get("state") != "LOADING" for m in index().values()), 60,
                 "both models to finish loading")
        index = index()
        assert index["static"]["state"] == "UNAVAILABLE"
        assert "no dynamic batch dimension" in index["static"]["reason"]
        assert index["mlp"]["state"] == "READY"
    finally:
        assert d.stop() == 0


def _lm(tokens: np.ndarray) -> list:
    a = grpcclient.InferInput("tokens", list(tokens.shape), "INT64")
    a.set_data_from_numpy(tokens)
    return [a]
