"""The benchmark's Python peer (tools/bench/peers/kserve_grpcio_server.py) answers like eager.

The peer is a baseline in docs/benchmarks.md, so its numbers only count if its answers are
right: it runs as a subprocess on 127.0.0.1 with the project venv (torch, grpcio, grpc_tools),
check_outputs.py compares every zoo reference (whole batch and row by row) with eager PyTorch and
expects INVALID_ARGUMENT for a wrong shape, and ModelStatistics counts the requests as
perf_analyzer reads them. PyTriton is not tested here: it is not a test dependency (see
tools/bench/peers/README.md).
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from conftest import REPO, free_port

PEERS = REPO / "tools" / "bench" / "peers"


@pytest.fixture(scope="module", params=["mlp", "two_io"])
def peer(request, model_dir, tmp_path_factory):
    name = request.param
    port = free_port()
    log = tmp_path_factory.mktemp("peer") / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(PEERS / "kserve_grpcio_server.py"),
                                 "--model", f"{name}={model_dir / (name + '.pt2')}",
                                 "--address", f"127.0.0.1:{port}", "--runners", "2", "--threads", "4"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "listening" not in log.read_text():
            assert proc.poll() is None, f"peer exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"peer not up after 90 s: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield name, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()


def test_peer_matches_eager(peer, model_dir):
    name, addr = peer
    res = subprocess.run([sys.executable, str(PEERS / "check_outputs.py"), "--address", addr,
                          "--model", name, "--model-dir", str(model_dir)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "match eager PyTorch" in res.stdout and "INVALID_ARGUMENT" in res.stdout


def test_peer_metadata_statistics_and_unknown_model(peer, signatures, refs):
    name, addr = peer
    client = tc.InferenceServerClient(addr)

    def counts():
        st = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
        return (int(st.get("inference_stats", {}).get("success", {}).get("count", 0)),
                int(st.get("execution_count", 0)), int(st.get("inference_count", 0)))

    inputs = []
    for tname, arr in refs[name]["inputs"].items():
        inputs.append(tc.InferInput(tname, list(arr.shape), np_to_triton_dtype(arr.dtype)))
        inputs[-1].set_data_from_numpy(arr)
    rows = next(iter(refs[name]["inputs"].values())).shape[0]
    before = counts()
    for _ in range(3):
        client.infer(name, inputs)
    after = counts()
    # One model call per request (no batching); inference_count counts rows, as Triton's does.
    assert [a - b for a, b in zip(after, before)] == [3, 3, 3 * rows]
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert "NOT_FOUND" in str(e.value.status())
