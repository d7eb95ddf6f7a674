"""Graceful termination as Kubernetes does it: SIGTERM while clients are sending.

The pod's endpoint disappears from Services only after the kubelet/endpoint controller notice,
and clients keep sending to it meanwhile. With `drain_delay_ms` the daemon turns readiness
NOT_SERVING at once, keeps serving for the delay, and only then closes its listeners and drains:
no request fails. These tests play the load balancer: client threads send KServe inferences,
a watcher polls grpc.health.v1 and "removes the endpoint" a propagation lag after it first sees
NOT_SERVING (clients send nothing new after that).
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import _kserve_probe, kserve_request

LAG_S = 0.6          # endpoint-removal propagation lag the clients see
CLIENTS = 4


def health(url: str, service: str = "") -> str:
    with grpc.insecure_channel(url) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.RpcError as e:
            return f"ERROR {e.code().name}"


def kserve_ready(url: str) -> bool | None:
    return _kserve_probe(url, ready=True)


def run_termination(daemon, refs, lag_s: float) -> dict:
    """Client load, SIGTERM, endpoint removal `lag_s` after NOT_SERVING; returns the tallies."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = refs["mlp"]["inputs"]["x"]
    want = refs["mlp"]["outputs"]["y"]
    removed = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()
    tally = {"ok": 0, "failed": [], "ok_after_sigterm": 0, "wrong": 0}
    sigterm_at: list[float] = []

    def client():
        ch = daemon.channel()
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        req = kserve_request(service_pb2, "mlp", {"x": x})
        while not removed.is_set() and not stop.is_set():
            try:
                r = stub.ModelInfer(req, timeout=10)
                y = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(want.shape)
                with lock:
                    tally["ok"] += 1
                    tally["wrong"] += int(not np.allclose(y, want, rtol=1e-4, atol=1e-5))
                    if sigterm_at:
                        tally["ok_after_sigterm"] += 1
            except grpc.RpcError as e:
                with lock:
                    tally["failed"].append(f"{e.code().name}: {e.details()}")
        ch.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        assert tally["ok"] > 0, f"no request succeeded before SIGTERM: {tally['failed'][:3]}"
        sigterm_at.append(time.monotonic())
        daemon.proc.send_signal(15)
        seen = None
        while time.monotonic() - sigterm_at[0] < 10:
            status = health(daemon.url)
            if status != "SERVING":
                seen = (time.monotonic() - sigterm_at[0], status)
                break
            time.sleep(0.02)
        assert seen, "readiness never left SERVING after SIGTERM"
        tally["not_serving_after_s"], tally["first_status"] = seen
        tally["liveness_while_draining"] = health(daemon.url, "liveness")
        time.sleep(lag_s)
        removed.set()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    tally["exit_code"] = daemon.proc.wait(timeout=60)
    tally["exited_after_s"] = time.monotonic() - sigterm_at[0]
    return tally


def test_no_request_fails_while_terminating(daemon_factory, model_dir, refs):
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2"),
                                "num_runners": 2}],
                       server={"drain_delay_ms": 2000, "drain_timeout_ms": 5000,
                               "max_connection_age_ms": 60000,
                               "max_connection_age_grace_ms": 5000})
    t = run_termination(d, refs, LAG_S)
    assert t["failed"] == [], f"{len(t['failed'])} requests failed: {t['failed'][:5]}"
    assert t["wrong"] == 0
    assert t["first_status"] == "NOT_SERVING" and t["not_serving_after_s"] < 0.5, t
    assert t["liveness_while_draining"] == "SERVING"
    assert t["ok_after_sigterm"] > 0, "no request was served during the drain delay"
    assert t["exit_code"] == 0, d.stderr_tail()
    assert t["exited_after_s"] >= 2.0, f"exited {t['exited_after_s']:.2f}s after SIGTERM"
    assert "draining: health NOT_SERVING" in d.stderr_text()


def test_without_drain_delay_requests_fail(daemon_factory, model_dir, refs):
    """The control: with no delay the listeners close at once and in-lag requests fail."""
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2"),
                                "num_runners": 2}],
                       server={"drain_delay_ms": 0, "drain_timeout_ms": 5000})
    t = run_termination(d, refs, LAG_S)
    assert t["failed"], "requests sent after the listeners closed should have failed"
    assert t["exit_code"] == 0


def test_second_signal_ends_drain_delay(daemon_factory, model_dir):
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2")}],
                       server={"drain_delay_ms": 60000})
    d.proc.send_signal(15)
    deadline = time.monotonic() + 5
    while health(d.url) == "SERVING" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert health(d.url) == "NOT_SERVING"
    assert health(d.url, "mlp") == "NOT_SERVING"
    assert kserve_ready(d.url) is False, "KServe ServerReady must agree with the health service"
    t0 = time.monotonic()
    d.proc.send_signal(2)
    assert d.proc.wait(timeout=20) == 0
    assert time.monotonic() - t0 < 10, "the second signal did not cut the delay short"


def test_startup_weights_flag(daemon_factory, model_dir, refs, tmp_path):
    """--initial-weights serves a weight set from the start; an empty FILE keeps the package's."""
    from safetensors.numpy import load_file, save_file
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    base = load_file(str(model_dir / "mlp.weights.safetensors"))
    rng = np.random.default_rng(2)
    doubled = {k: (v + rng.normal(0, 0.2, v.shape)).astype(v.dtype) for k, v in base.items()}
    wfile = tmp_path / "mlp-x2.safetensors"
    save_file(doubled, str(wfile))
    import hashlib
    sha = hashlib.sha256(wfile.read_bytes()).hexdigest()
    models = [{"name": "mlp", "path": str(model_dir / "mlp.pt2")}]

    def infer(daemon):
        with daemon.channel() as ch:
            r = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                kserve_request(service_pb2, "mlp", {"x": refs["mlp"]["inputs"]["x"]}), timeout=10)
            return (r.parameters["weights_version"].string_param,
                    np.frombuffer(r.raw_output_contents[0], np.float32))

    d = daemon_factory(models=models, extra_args=(
        f"--initial-weights=mlp={wfile}:version=x2,sha256={sha}",))
    version, y = infer(d)
    assert version == "x2"
    assert not np.allclose(y, refs["mlp"]["outputs"]["y"].ravel(), rtol=1e-3, atol=1e-4)
    assert health(d.url) == "SERVING"

    empty = daemon_factory(models=models, extra_args=("--initial-weights=mlp=:version=,sha256=",))
    assert infer(empty)[0] == "initial"

    # A wrong checksum: the model never reports SERVING (the pod gets no traffic).
    bad = daemon_factory(models=models, wait="live", extra_args=(
        f"--initial-weights=mlp={wfile}:version=x2,sha256={'0' * 64}",))
    deadline = time.monotonic() + 20
    while "stays NOT_SERVING" not in bad.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "checksum mismatch" in bad.stderr_text()
    assert health(bad.url) == "NOT_SERVING" and health(bad.url, "mlp") == "NOT_SERVING"
    assert kserve_ready(bad.url) is False
    assert health(bad.url, "liveness") == "SERVING"
