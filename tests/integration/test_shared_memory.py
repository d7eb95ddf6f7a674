"""KServe system shared memory (Triton's extension; docs/shared-memory.md), end to end.

A daemon started with `server.shared_memory: system` is driven with tritonclient.grpc and
tritonclient.utils.shared_memory exactly as Triton's examples do: inputs read from registered
regions give the same outputs as raw requests (and the zoo's references), outputs land in
regions with the shared_memory_* parameters and no raw contents, Status/Unregister behave like
Triton's, and bad regions, offsets and sizes are INVALID_ARGUMENT (never a crash) while the
daemon keeps serving, also when a client truncates a registered object (before a request, or
while one waits to be run: the SIGBUS guard) or unregisters regions under load. The shared daemon (extension off) answers the RPCs UNIMPLEMENTED and shared-memory
tensors INVALID_ARGUMENT, both saying how to enable it. perf_analyzer --shared-memory=system
runs against it when the wrapper exists.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

import numpy as np
import pytest

from conftest import RPC_TIMEOUT, assert_close, start_daemon

shm = pytest.importorskip("tritonclient.utils.shared_memory")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def shm_daemon(tmp_path_factory, model_dir, daemon_path):
    models = [{"name": n, "path": str(model_dir / f"{n}.pt2"), "num_runners": 1}
              for n in ("mlp", "two_io")]
    d = start_daemon(tmp_path_factory.mktemp("shm_daemon"), models=models,
                     server={"shared_memory": "system"}, metrics=False)
    try:
        yield d
    finally:
        alive = d.alive()
        code = d.stop() if alive else d.proc.returncode
        assert alive and code == 0, f"daemon died or failed to stop ({code}):\n{d.stderr_tail()}"


@pytest.fixture
def client(shm_daemon):
    c = grpcclient.InferenceServerClient(shm_daemon.url)
    try:
        yield c
    finally:
        try:
            c.unregister_system_shared_memory()
        finally:
            c.close()


class Regions:
    """Creates client shm objects with unique keys; destroys them at teardown."""

    def __init__(self):
        self.handles = []
        self.tag = uuid.uuid4().hex[:8]

    def create(self, name: str, byte_size: int):
        key = f"/pt2serve_it_{self.tag}_{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles.append(handle)
        return handle, key

    def close(self):
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture
def regions():
    r = Regions()
    try:
        yield r
    finally:
        r.close()


def code_of(excinfo) -> str:
    return str(excinfo.value.status())


def shm_input(name, arr, region, offset=0, byte_size=None):
    i = grpcclient.InferInput(name, list(arr.shape), {np.float32: "FP32", np.int64: "INT64"}[
        arr.dtype.type])
    i.set_shared_memory(region, arr.nbytes if byte_size is None else byte_size, offset)
    return i


def raw_input(name, arr):
    i = grpcclient.InferInput(name, list(arr.shape), {np.float32: "FP32", np.int64: "INT64"}[
        arr.dtype.type])
    i.set_data_from_numpy(arr)
    return i


def mlp_raw(client, x):
    return client.infer("mlp", [raw_input("x", x)], client_timeout=RPC_TIMEOUT).as_numpy("y")


def test_mlp_inputs_and_outputs_in_shared_memory_match_raw(client, regions, refs):
    x = refs["mlp"]["inputs"]["x"]
    want = refs["mlp"]["outputs"]["y"]
    raw_y = mlp_raw(client, x)
    assert_close("raw y", raw_y, want)

    # Input region with the tensor at an offset; output region sized for y.
    in_handle, in_key = regions.create("mlp_in", 4096 + x.nbytes)
    out_handle, out_key = regions.create("mlp_out", want.nbytes)
    shm.set_shared_memory_region(in_handle, [x], offset=4096)
    client.register_system_shared_memory("mlp_in", in_key, 4096 + x.nbytes)
    client.register_system_shared_memory("mlp_out", out_key, want.nbytes)
    assert "system_shared_memory" in client.get_server_metadata(as_json=True)["extensions"]

    # shm input, raw output: the same numbers as the raw request.
    result = client.infer("mlp", [shm_input("x", x, "mlp_in", offset=4096)],
                          client_timeout=RPC_TIMEOUT)
    np.testing.assert_array_equal(result.as_numpy("y"), raw_y)

    # shm input and output: the response carries the region, no bytes.
    out = grpcclient.InferRequestedOutput("y")
    out.set_shared_memory("mlp_out", want.nbytes)
    result = client.infer("mlp", [shm_input("x", x, "mlp_in", offset=4096)], outputs=[out],
                          client_timeout=RPC_TIMEOUT)
    response = result.get_response()
    assert list(response.raw_output_contents) == [b""]  # one (empty) entry per output, as Triton
    (y_meta,) = response.outputs
    assert list(y_meta.shape) == list(want.shape) and y_meta.datatype == "FP32"
    assert y_meta.parameters["shared_memory_region"].string_param == "mlp_out"
    assert y_meta.parameters["shared_memory_byte_size"].int64_param == want.nbytes
    got = shm.get_contents_as_numpy(out_handle, np.float32, list(y_meta.shape))
    np.testing.assert_array_equal(got, raw_y)

    # New input values in the same region: the server reads them, not a cached copy.
    x2 = (x * 2 + 1).astype(np.float32)
    shm.set_shared_memory_region(in_handle, [x2], offset=4096)
    client.infer("mlp", [shm_input("x", x2, "mlp_in", offset=4096)], outputs=[out],
                 client_timeout=RPC_TIMEOUT)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, want.shape),
                                  mlp_raw(client, x2))


def test_two_io_mixes_raw_and_shared_memory_tensors(client, regions, refs):
    x, ids = refs["two_io"]["inputs"]["x"], refs["two_io"]["inputs"]["ids"]
    want = refs["two_io"]["outputs"]
    in_handle, in_key = regions.create("two_in", x.nbytes)
    out_handle, out_key = regions.create("two_out", 1024)
    shm.set_shared_memory_region(in_handle, [x])
    client.register_system_shared_memory("two_in", in_key, x.nbytes)
    client.register_system_shared_memory("two_out", out_key, 1024)
    # x from shm, ids raw (one raw entry for two inputs); sum to shm at an offset, scores raw.
    summed = grpcclient.InferRequestedOutput("sum")
    summed.set_shared_memory("two_out", 1024 - 256, offset=256)
    result = client.infer("two_io", [shm_input("x", x, "two_in"), raw_input("ids", ids)],
                          outputs=[summed, grpcclient.InferRequestedOutput("scores")],
                          client_timeout=RPC_TIMEOUT)
    assert_close("scores", result.as_numpy("scores"), want["scores"])
    sum_meta = result.get_output("sum")
    assert sum_meta.parameters["shared_memory_offset"].int64_param == 256
    assert_close("sum", shm.get_contents_as_numpy(out_handle, np.float32, list(sum_meta.shape),
                                                  offset=256), want["sum"])

    # The same through ModelStreamInfer.
    results = []
    done = threading.Event()

    def on_result(result, error):
        results.append((result, error))
        done.set()

    client.start_stream(callback=on_result)
    try:
        client.async_stream_infer("two_io", [shm_input("x", x, "two_in"), raw_input("ids", ids)],
                                  outputs=[summed, grpcclient.InferRequestedOutput("scores")])
        assert done.wait(RPC_TIMEOUT)
    finally:
        client.stop_stream()
    (res, err), = results
    assert err is None, err
    assert_close("stream scores", res.as_numpy("scores"), want["scores"])


def test_status_and_unregister_like_triton(client, regions):
    _, key_a = regions.create("a", 8192)
    _, key_b = regions.create("b", 4096)
    client.register_system_shared_memory("a", key_a, 4096, offset=4096)
    client.register_system_shared_memory("b", key_b, 4096)
    status = client.get_system_shared_memory_status(as_json=True)["regions"]
    assert set(status) == {"a", "b"}
    assert status["a"]["key"] == key_a
    assert int(status["a"]["offset"]) == 4096 and int(status["a"]["byte_size"]) == 4096
    assert list(client.get_system_shared_memory_status("b", as_json=True)["regions"]) == ["b"]

    with pytest.raises(InferenceServerException) as e:
        client.register_system_shared_memory("a", key_b, 16)
    assert code_of(e) == "StatusCode.ALREADY_EXISTS" and "'a' is already registered" in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        client.get_system_shared_memory_status("nope")
    assert code_of(e) == "StatusCode.NOT_FOUND"

    client.unregister_system_shared_memory("a")
    client.unregister_system_shared_memory("a")  # unknown name: not an error (as Triton)
    assert list(client.get_system_shared_memory_status(as_json=True).get("regions", {})) == ["b"]
    client.unregister_system_shared_memory()  # empty name: all
    assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}


def test_bad_regions_offsets_and_sizes_are_invalid_argument(client, regions, shm_daemon, refs):
    x = refs["mlp"]["inputs"]["x"]  # [3, 16] float32: 192 bytes
    handle, key = regions.create("bad", 1024)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("bad", key, 1024)

    def infer_error(inputs, outputs=None, want="StatusCode.INVALID_ARGUMENT"):
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", inputs, outputs=outputs, client_timeout=RPC_TIMEOUT)
        assert code_of(e) == want, e.value
        return e.value.message()

    assert "'nowhere' is not registered" in infer_error([shm_input("x", x, "nowhere")])
    assert "offset 1000 + byte_size 192 exceeds shared memory region 'bad''s 1024 bytes" in \
        infer_error([shm_input("x", x, "bad", offset=1000)])
    assert "must be an integer >= 0" in infer_error([shm_input("x", x, "bad", offset=-4)])
    # byte_size that does not match the shape: the runtime's byte-length check.
    assert "'x'" in infer_error([shm_input("x", x, "bad", byte_size=100)])
    assert "exceeds" in infer_error([shm_input("x", x, "bad", byte_size=1 << 40)])
    # Output region range too small for y ([3, 8] float32 = 96 bytes).
    small = grpcclient.InferRequestedOutput("y")
    small.set_shared_memory("bad", 64, offset=512)
    assert "output 'y' is 96 bytes but its shared_memory_byte_size is 64" in \
        infer_error([shm_input("x", x, "bad")], [small])
    past = grpcclient.InferRequestedOutput("y")
    past.set_shared_memory("bad", 96, offset=1000)
    assert "exceeds" in infer_error([shm_input("x", x, "bad")], [past])

    def register_error(name, key_, byte_size, offset=0):
        with pytest.raises(InferenceServerException) as e:
            client.register_system_shared_memory(name, key_, byte_size, offset=offset)
        return code_of(e), e.value.message()

    assert register_error("r", f"/pt2serve_it_missing_{regions.tag}", 16)[0] == \
        "StatusCode.NOT_FOUND"
    code, msg = register_error("r", key, 64, offset=1000)
    assert code == "StatusCode.INVALID_ARGUMENT" and "exceeds the object's 1024 bytes" in msg
    assert register_error("r", "../etc/passwd", 16)[0] == "StatusCode.INVALID_ARGUMENT"
    assert register_error("r", key, 0)[0] == "StatusCode.INVALID_ARGUMENT"
    assert register_error("n" * 300, key, 16)[0] == "StatusCode.INVALID_ARGUMENT"

    assert shm_daemon.alive(), shm_daemon.stderr_tail()
    assert_close("y after errors", mlp_raw(client, x), refs["mlp"]["outputs"]["y"])
    result = client.infer("mlp", [shm_input("x", x, "bad")], client_timeout=RPC_TIMEOUT)
    assert_close("shm y after errors", result.as_numpy("y"), refs["mlp"]["outputs"]["y"])


def test_truncated_object_is_refused_without_a_crash(client, regions, shm_daemon, refs):
    x = refs["mlp"]["inputs"]["x"]
    handle, key = regions.create("trunc", 3 * 4096)
    shm.set_shared_memory_region(handle, [x], offset=2 * 4096)
    client.register_system_shared_memory("trunc", key, 3 * 4096)
    os.truncate(f"/dev/shm/{key.lstrip('/')}", 4096)  # the client shrinks it behind our back
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [shm_input("x", x, "trunc", offset=2 * 4096)],
                     client_timeout=RPC_TIMEOUT)
    assert code_of(e) == "StatusCode.INVALID_ARGUMENT"
    assert "was shrunk" in e.value.message()
    assert shm_daemon.alive(), shm_daemon.stderr_tail()
    assert_close("y", mlp_raw(client, x), refs["mlp"]["outputs"]["y"])


def test_truncation_while_a_request_waits_fails_it_without_a_crash(daemon_factory, model_dir,
                                                                   regions, refs):
    """The object is shrunk after the request passed its checks, before the model reads it
    (the request waits 2 s for its batch): the read faults, the daemon's SIGBUS guard swaps in
    zero pages, and the request fails INVALID_ARGUMENT; the daemon keeps serving."""
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2"),
                                "num_runners": 1,
                                "dynamic_batching": {"max_queue_delay_us": 2_000_000}}],
                       server={"shared_memory": "system"}, metrics=False)
    x = refs["mlp"]["inputs"]["x"]
    handle, key = regions.create("waiting", 3 * 4096)
    shm.set_shared_memory_region(handle, [x], offset=2 * 4096)
    c = grpcclient.InferenceServerClient(d.url)
    try:
        c.register_system_shared_memory("waiting", key, 3 * 4096)
        results = []
        done = threading.Event()
        c.async_infer("mlp", [shm_input("x", x, "waiting", offset=2 * 4096)],
                      callback=lambda result, error: (results.append((result, error)), done.set()),
                      client_timeout=RPC_TIMEOUT)
        # Truncated once the request is past its checks and waiting for its batch (no gauge
        # counts requests a batcher holds; a loopback request arrives in far less than 0.3 s).
        time.sleep(0.3)
        assert not done.is_set(), results
        os.truncate(f"/dev/shm/{key.lstrip('/')}", 0)
        assert done.wait(RPC_TIMEOUT)
        ((result, error),) = results
        assert error is not None, "the request read a truncated object and succeeded"
        assert str(error.status()) == "StatusCode.INVALID_ARGUMENT", error
        assert "truncated while in use" in error.message(), error.message()
        assert d.alive(), d.stderr_tail()
        # Later uses of the region fail too; a fresh object under a new name works.
        with pytest.raises(InferenceServerException) as e:
            c.infer("mlp", [shm_input("x", x, "waiting", offset=2 * 4096)],
                    client_timeout=RPC_TIMEOUT)
        assert code_of(e) == "StatusCode.INVALID_ARGUMENT"
        c.unregister_system_shared_memory("waiting")
        fresh, fresh_key = regions.create("fresh", x.nbytes)
        shm.set_shared_memory_region(fresh, [x])
        c.register_system_shared_memory("fresh", fresh_key, x.nbytes)
        y = c.infer("mlp", [shm_input("x", x, "fresh")], client_timeout=RPC_TIMEOUT).as_numpy("y")
        assert_close("y", y, refs["mlp"]["outputs"]["y"])
    finally:
        c.close()
    assert d.stop() == 0


def test_unregister_and_register_under_load(client, regions, shm_daemon, refs):
    """Requests racing Unregister/Register of their region either succeed with the right
    numbers or fail INVALID_ARGUMENT (region not registered); the daemon never crashes."""
    x = refs["mlp"]["inputs"]["x"]
    want = refs["mlp"]["outputs"]["y"]
    handle, key = regions.create("race", x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("race", key, x.nbytes)
    stop = threading.Event()
    outcomes = {"ok": 0, "invalid": 0}
    problems = []

    def load():
        c = grpcclient.InferenceServerClient(shm_daemon.url)
        try:
            while not stop.is_set():
                try:
                    y = c.infer("mlp", [shm_input("x", x, "race")],
                                client_timeout=RPC_TIMEOUT).as_numpy("y")
                    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
                    outcomes["ok"] += 1
                except InferenceServerException as e:
                    if str(e.status()) != "StatusCode.INVALID_ARGUMENT":
                        problems.append(str(e))
                    outcomes["invalid"] += 1
                except AssertionError as e:
                    problems.append(str(e))
        finally:
            c.close()

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        client.unregister_system_shared_memory("race")
        client.register_system_shared_memory("race", key, x.nbytes)
    stop.set()
    for t in threads:
        t.join(RPC_TIMEOUT)
    assert not problems, problems[:3]
    assert outcomes["ok"] > 0, outcomes
    assert shm_daemon.alive(), shm_daemon.stderr_tail()


def test_disabled_by_default_with_a_clear_error(server, regions, refs):
    x = refs["mlp"]["inputs"]["x"]
    c = grpcclient.InferenceServerClient(server.url)
    try:
        handle, key = regions.create("off", x.nbytes)
        for call in (lambda: c.register_system_shared_memory("off", key, x.nbytes),
                     lambda: c.get_system_shared_memory_status(),
                     lambda: c.unregister_system_shared_memory()):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert code_of(e) == "StatusCode.UNIMPLEMENTED"
            assert "server.shared_memory: system" in e.value.message()
        assert "system_shared_memory" not in c.get_server_metadata(as_json=True)["extensions"]
        with pytest.raises(InferenceServerException) as e:
            c.infer("mlp", [shm_input("x", x, "off")], client_timeout=RPC_TIMEOUT)
        assert code_of(e) == "StatusCode.INVALID_ARGUMENT"
        assert "system shared memory is off on this server" in e.value.message()
    finally:
        c.close()


def test_perf_analyzer_system_shared_memory(shm_daemon, server):
    """perf_analyzer --shared-memory=system creates, registers and uses its own regions (inputs
    and outputs); against the shared daemon (extension off) it stops at the registration."""
    from test_perf_analyzer import find_perf_analyzer

    path, _ = find_perf_analyzer()
    if path is None:
        pytest.skip("no perf_analyzer wrapper (see test_perf_analyzer.py)")
    client = grpcclient.InferenceServerClient(shm_daemon.url)
    try:
        before = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
        # Stability is not the point here (the host is shared): a wide tolerance.
        cmd = [path, "-m", "mlp", "-i", "grpc", "--shared-memory=system",
               "--output-shared-memory-size", "4096", "-b", "4", "--concurrency-range", "1:2",
               "-p", "1000", "--max-trials", "10", "--stability-percentage", "500"]
        proc = subprocess.run([*cmd, "-u", shm_daemon.url], capture_output=True, text=True,
                              timeout=240)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{out[-6000:]}\nserver:\n{shm_daemon.stderr_tail()}"
        assert "Concurrency: 2, throughput" in proc.stdout, proc.stdout
        after = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
        assert int(after["inference_count"]) - int(before.get("inference_count", 0)) >= 8
        assert int(after["inference_stats"].get("fail", {}).get("count", 0)) == \
            int(before["inference_stats"].get("fail", {}).get("count", 0))
        assert shm_daemon.alive()

        before_off = set(os.listdir("/dev/shm"))
        off = subprocess.run([*cmd, "-u", server.url], capture_output=True, text=True,
                             timeout=240)
        # perf_analyzer 2.41 leaves the objects it made (named after the tensors) when it
        # stops at a failed registration.
        for leftover in (set(os.listdir("/dev/shm")) - before_off) & {"x", "y"}:
            os.unlink(f"/dev/shm/{leftover}")
        assert off.returncode != 0
        assert "server.shared_memory: system" in off.stdout + off.stderr, off.stdout + off.stderr
    finally:
        client.close()
