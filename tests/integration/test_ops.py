"""Operations surface of the real daemon: gRPC health, server reflection, Prometheus /metrics
(parsed), JSON logs and the access log, a config with a missing package, and graceful SIGTERM
with requests in flight.
"""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import (MAIN_RUNNERS, RPC_TIMEOUT, ZOO, kserve_request, metric, parse_metrics,
                      sample_value, scrape, wait_for)

T = RPC_TIMEOUT
X = np.ones((3, 16), np.float32)
BIG_OPTS = [("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)]


def health_check(target: str, service: str):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=T).status


# -------------------------------------------------------------------------------- health


def test_health_serving(server):
    from grpc_health.v1 import health_pb2

    for service in ("", "inference.GRPCInferenceService", "pt2serve.v1.Inference", *ZOO):
        assert health_check(server.url, service) == health_pb2.HealthCheckResponse.SERVING, \
            service


def test_health_unknown_service_not_found(server):
    with pytest.raises(grpc.RpcError) as e:
        health_check(server.url, "no_such_model")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------- reflection


def reflected_services(target: str) -> tuple[list[str], object]:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase)

    ch = grpc.insecure_channel(target)
    db = ProtoReflectionDescriptorDatabase(ch)
    return list(db.get_services()), DescriptorPool(db), ch


def test_reflection_lists_services(server):
    services, pool, ch = reflected_services(server.url)
    try:
        assert {"inference.GRPCInferenceService", "pt2serve.v1.Inference",
                "grpc.health.v1.Health"} <= set(services), services
        assert "pt2serve.v1.Admin" not in services, "admin API advertised on the inference port"
        # The descriptors are resolvable through reflection (what grpcurl needs).
        native = pool.FindServiceByName("pt2serve.v1.Inference")
        assert {m.name for m in native.methods} == {"Run", "ListModels", "GetModel"}
        kserve = pool.FindServiceByName("inference.GRPCInferenceService")
        assert {"ModelInfer", "ModelMetadata", "ModelConfig", "ModelStatistics",
                "RepositoryIndex", "ServerReady"} <= {m.name for m in kserve.methods}
        run_req = pool.FindMessageTypeByName("pt2serve.v1.RunRequest")
        assert [f.name for f in run_req.fields] == ["model", "inputs", "outputs", "request_id",
                                                "priority", "model_version"]
    finally:
        ch.close()


# ------------------------------------------------------------------------------- metrics


def _native_run(pb, server, model, inputs, expect_ok=True):
    pb2 = pb.inference_pb2
    dt = {np.dtype(np.float32): pb2.DT_FLOAT32, np.dtype(np.int64): pb2.DT_INT64}
    req = pb2.RunRequest(model=model, inputs=[
        pb2.Tensor(name=n, dtype=dt[a.dtype], shape=list(a.shape), data=a.tobytes())
        for n, a in inputs.items()])
    with server.channel() as ch:
        stub = pb.inference_pb2_grpc.InferenceStub(ch)
        if expect_ok:
            stub.Run(req, timeout=T)
        else:
            with pytest.raises(grpc.RpcError) as e:
                stub.Run(req, timeout=T)
            return e.value.code()


def test_metrics_parsed_and_count_requests(server, pb, refs):
    before = parse_metrics(scrape(server))
    with server.channel() as ch:
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        for _ in range(3):
            kserve.ModelInfer(kserve_request(service_pb2, "mlp", {"x": X}), timeout=T)
        with pytest.raises(grpc.RpcError) as e:
            kserve.ModelInfer(kserve_request(service_pb2, "mlp", {"x": np.ones((3, 5),
                                                                                np.float32)}),
                              timeout=T)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for _ in range(2):
        _native_run(pb, server, "mlp", {"x": X})
    _native_run(pb, server, "two_io", refs["two_io"]["inputs"])
    assert _native_run(pb, server, "two_io", {"x": np.ones((3, 8), np.float32)},
                       expect_ok=False) == grpc.StatusCode.INVALID_ARGUMENT
    after = parse_metrics(scrape(server))

    def delta(sample, **labels):
        return sample_value(after, sample, **labels) - sample_value(before, sample, **labels)

    req = "pt2serve_requests_total"
    assert after["pt2serve_requests"].type == "counter"
    assert delta(req, model="mlp", protocol="kserve", code="OK") == 3
    assert delta(req, model="mlp", protocol="kserve", code="INVALID_ARGUMENT") == 1
    assert delta(req, model="mlp", protocol="pt2serve", code="OK") == 2
    assert delta(req, model="mlp", protocol="pt2serve", code="INVALID_ARGUMENT") == 0
    assert delta(req, model="two_io", protocol="pt2serve", code="OK") == 1
    assert delta(req, model="two_io", protocol="pt2serve", code="INVALID_ARGUMENT") == 1
    assert delta(req, model="two_io", protocol="kserve") == 0
    assert delta(req, model="cnn") == 0

    # Latency histograms (seconds): total for every request, queue/compute for successful ones.
    for fam in ("pt2serve_request_duration_seconds", "pt2serve_queue_duration_seconds",
                "pt2serve_compute_duration_seconds"):
        assert after[fam].type == "histogram", fam
    assert delta("pt2serve_request_duration_seconds_count", model="mlp", protocol="kserve") == 4
    assert delta("pt2serve_request_duration_seconds_sum", model="mlp", protocol="kserve") > 0
    assert delta("pt2serve_compute_duration_seconds_count", model="mlp", protocol="kserve") == 3
    assert delta("pt2serve_compute_duration_seconds_sum", model="mlp", protocol="kserve") > 0
    assert delta("pt2serve_queue_duration_seconds_count", model="mlp", protocol="pt2serve") == 2
    for s in after["pt2serve_request_duration_seconds"].samples:
        if s.name.endswith("_bucket") and s.labels["le"] == "+Inf":
            count = sample_value(after, "pt2serve_request_duration_seconds_count",
                                 model=s.labels["model"], protocol=s.labels["protocol"])
            assert s.value == count, s
    # No latency family is named in another unit.
    assert not [f for f in after if f.startswith("pt2serve_") and
                ("_ms" in f or "_us" in f or "milliseconds" in f or "microseconds" in f)]


def test_metrics_model_gauges(server):
    fams = parse_metrics(scrape(server))
    for name in ZOO:
        assert sample_value(fams, "pt2serve_model_state", model=name, state="READY") == 1
        for other in ("LOADING", "UNLOADING", "FAILED"):
            assert sample_value(fams, "pt2serve_model_state", model=name, state=other) == 0
        assert sample_value(fams, "pt2serve_inflight_requests", model=name) == 0  # idle
        assert sample_value(fams, "pt2serve_queue_depth", model=name) == 0
        assert sample_value(fams, "pt2serve_model_runners", model=name) == MAIN_RUNNERS[name]
        assert sample_value(fams, "pt2serve_weights_version_info", model=name,
                            version="initial") == 1
        assert sample_value(fams, "pt2serve_model_load_duration_seconds_count",
                            model=name) == 1
        assert sample_value(fams, "pt2serve_model_load_duration_seconds_sum", model=name) > 0
    for fam, kind in (("pt2serve_model_state", "gauge"), ("pt2serve_inflight_requests", "gauge"),
                      ("pt2serve_queue_depth", "gauge"),
                      ("pt2serve_weights_version_info", "gauge"),
                      ("pt2serve_model_load_duration_seconds", "histogram")):
        assert fams[fam].type == kind, fam


def test_metrics_inflight_and_queue_depth_under_load(daemon_factory, model_dir):
    """The in-flight / queue gauges move while requests wait (and return to 0)."""
    d = daemon_factory(models=[{"name": "cnn", "path": str(model_dir / "cnn.pt2"),
                                "num_runners": 1, "max_queue_size": 256}])
    image = np.zeros((1024, 3, 16, 16), np.float32)
    req = kserve_request(service_pb2, "cnn", {"image": image})
    with grpc.insecure_channel(d.url, options=BIG_OPTS) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        futures = [stub.ModelInfer.future(req, timeout=60) for _ in range(30)]
        seen = {"inflight": 0.0, "queued": 0.0}

        def observe():
            fams = parse_metrics(scrape(d))
            seen["inflight"] = max(seen["inflight"], sample_value(
                fams, "pt2serve_inflight_requests", model="cnn"))
            seen["queued"] = max(seen["queued"], sample_value(
                fams, "pt2serve_queue_depth", model="cnn"))
            return seen["inflight"] >= 1 and seen["queued"] >= 2

        wait_for(observe, 20, "pt2serve_inflight_requests >= 1 and pt2serve_queue_depth >= 2")
        assert seen["inflight"] <= 1, "more requests in flight than runners"
        for f in futures:
            f.result(timeout=60)
    assert metric(d, "pt2serve_inflight_requests", model="cnn") == 0
    assert metric(d, "pt2serve_queue_depth", model="cnn") == 0
    assert d.stop() == 0


# ---------------------------------------------------------------------------------- logs


def _json_lines(text: str) -> list[dict]:
    records = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise AssertionError(f"stderr line {i + 1} is not JSON: {line!r} ({e})")
        assert isinstance(rec, dict), line
        assert {"ts_us", "level", "logger", "msg"} <= set(rec), line
        assert isinstance(rec["ts_us"], int) and isinstance(rec["msg"], str), line
        records.append(rec)
    return records


def _send_requests(d, n: int, request_id: str) -> None:
    with grpc.insecure_channel(d.url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        for i in range(n):
            stub.ModelInfer(kserve_request(service_pb2, "mlp", {"x": X}, id=f"{request_id}-{i}"),
                            timeout=T)
        with pytest.raises(grpc.RpcError):  # a failing request too
            stub.ModelInfer(kserve_request(service_pb2, "mlp", {"x": X[:, :3]},
                                           id=f"{request_id}-bad"), timeout=T)


@pytest.mark.parametrize("access_log", [False, True])
def test_json_logs_and_access_log(daemon_factory, model_dir, access_log):
    args = ("--log-format", "json", "--log-level", "info") + (("--access-log",) if access_log
                                                              else ())
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2")}],
                       extra_args=args, metrics=False)
    time.sleep(0.2)  # let start-up lines land
    lines_at_ready = len(d.stderr_text().splitlines())
    _send_requests(d, 10, "req")
    time.sleep(0.2)
    lines_after_requests = len(d.stderr_text().splitlines())
    assert d.stop() == 0
    records = _json_lines(d.stderr_text())
    msgs = [r["msg"] for r in records]
    assert any(r["logger"] == "server" and "listening" in r["msg"] for r in records), msgs
    assert any("'mlp' READY" in m for m in msgs), msgs
    assert any("shutdown complete" in m for m in msgs), msgs
    assert {r["level"] for r in records} <= {"trace", "debug", "info", "warning", "error",
                                             "critical"}
    access = [r for r in records if r["logger"] == "access"]
    if access_log:
        assert len(access) == 11, [r["msg"] for r in access]
        assert all("model=mlp" in r["msg"] for r in access)
        ids = {m.split("id=")[1].split()[0] for m in (r["msg"] for r in access)}
        assert ids == {f"req-{i}" for i in range(10)} | {"req-bad"}
        assert sum("code=OK" in r["msg"] for r in access) == 10
        assert sum("code=INVALID_ARGUMENT" in r["msg"] for r in access) == 1
    else:
        assert access == []
        # Not one line per request at info level (nothing at all while serving).
        assert lines_after_requests == lines_at_ready, \
            d.stderr_text().splitlines()[lines_at_ready:]


def test_access_log_keeps_request_id_of_rejected_requests(daemon_factory, model_dir, pb):
    """The request id is "written to the server logs" (inference.proto) for every request,
    including ones rejected while decoding (unknown datatype / DT_INVALID)."""
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2")}],
                       extra_args=("--log-format", "json", "--access-log"), metrics=False)
    pb2 = pb.inference_pb2
    with grpc.insecure_channel(d.url) as ch:
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        req = kserve_request(service_pb2, "mlp", {"x": X}, id="kserve-decode-fail")
        req.inputs[0].datatype = "FP33"
        with pytest.raises(grpc.RpcError) as e:
            kserve.ModelInfer(req, timeout=T)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        native = pb.inference_pb2_grpc.InferenceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            native.Run(pb2.RunRequest(model="mlp", request_id="native-decode-fail", inputs=[
                pb2.Tensor(name="x", dtype=pb2.DT_INVALID, shape=[3, 16], data=X.tobytes())]),
                timeout=T)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert d.stop() == 0
    access = [r["msg"] for r in _json_lines(d.stderr_text()) if r["logger"] == "access"]
    assert len(access) == 2, access
    assert "id=kserve-decode-fail " in access[0], access[0]
    assert "id=native-decode-fail " in access[1], access[1]


def test_metrics_unknown_model_names_do_not_create_series(daemon_factory, model_dir):
    """Model names in requests are client input: requests for models that do not exist must
    not mint new Prometheus series per name (unbounded cardinality: /metrics and memory grow
    with every distinct name a client sends)."""
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2")}])
    size_before = len(scrape(d))
    with grpc.insecure_channel(d.url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        req = kserve_request(service_pb2, "mlp", {"x": X})
        for i in range(200):
            req.model_name = f"nonexistent-{i}"
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(req, timeout=T)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    text = scrape(d)
    minted = {s.labels["model"] for f in parse_metrics(text).values() for s in f.samples
              if s.labels.get("model", "").startswith("nonexistent-")}
    assert not minted, (f"{len(minted)} per-name series minted for unknown models; /metrics grew "
                        f"from {size_before} to {len(text)} bytes")
    assert d.stop() == 0


def test_sigint_exits_zero(daemon_factory, model_dir):
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2")}],
                       metrics=False)
    d.proc.send_signal(2)
    assert d.proc.wait(timeout=30) == 0, d.stderr_tail()
    assert "received SIGINT" in d.stderr_text()


def test_second_daemon_on_a_taken_port_fails(daemon_factory, model_dir):
    """A daemon whose inference address is already in use must fail to start (exit 2,
    "cannot listen"), not silently share the port with the first one (gRPC enables
    SO_REUSEPORT by default; then the kernel splits connections between the processes)."""
    a = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2")}],
                       metrics=False)
    b = daemon_factory(models=[{"name": "cnn", "path": str(model_dir / "cnn.pt2")}],
                       server={"inference_address": a.url}, metrics=False, wait="none")
    # Either it exits (expected) or it logs that it listens (then it serves the port).
    wait_for(lambda: b.proc.poll() is not None or "listening" in b.stderr_text(), 15,
             "the second daemon to exit or listen")
    code = b.proc.poll()
    if code is None:  # still running: show where connections to the shared port land
        seen = set()
        for _ in range(30):
            with grpc.insecure_channel(a.url, options=[("grpc.use_local_subchannel_pool", 1)]
                                       ) as ch:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
                index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=T)
                seen.add(tuple(m.name for m in index.models))
        raise AssertionError(
            f"second daemon (pid {b.pid}) started on the taken port {a.url} and is serving; "
            f"model sets answering on that port over 30 fresh connections: {sorted(seen)}")
    assert code == 2, f"exit {code}; stderr:\n{b.stderr_tail()}"
    assert "cannot listen" in b.stderr_text()
    assert a.alive()
    assert a.stop() == 0


# ------------------------------------------------------------------- per-model CPU threads


def test_model_cpu_threads_from_config_and_flag(daemon_factory, model_dir, refs, daemon_path,
                                                tmp_path):
    """`cpu_threads` (YAML key and -m option) is accepted, the model serves correct results
    with it, and a bad value is a clear startup error naming the option."""
    from conftest import assert_close, free_port

    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2"),
                                "num_runners": 2, "cpu_threads": 1}], metrics=False)
    x, want = refs["mlp"]["inputs"]["x"], refs["mlp"]["outputs"]["y"]
    with grpc.insecure_channel(d.url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        for _ in range(4):
            resp = stub.ModelInfer(kserve_request(service_pb2, "mlp", {"x": x}), timeout=T)
            got = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(want.shape)
            assert_close("y", got, want)
    assert d.stop() == 0

    import subprocess
    for value, fragment in (("x", "bad value for 'cpu_threads'"), ("-1", "cpu_threads")):
        p = subprocess.run([str(daemon_path), "--admin-address", "", "--metrics-address", "",
                            "--inference-address", f"127.0.0.1:{free_port()}",
                            "-m", f"mlp={model_dir / 'mlp.pt2'}:cpu_threads={value}"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and fragment in p.stderr, (value, p.returncode, p.stderr)


# ------------------------------------------------------------------- missing model package


def test_missing_package_fails_that_model_only(daemon_factory, model_dir, pb, tmp_path):
    from grpc_health.v1 import health_pb2

    ghost = tmp_path / "nowhere" / "ghost.pt2"
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2")},
                               {"name": "ghost", "path": str(ghost)}], wait="live")
    pb2 = pb.inference_pb2
    with grpc.insecure_channel(d.url) as ch:
        native = pb.inference_pb2_grpc.InferenceStub(ch)
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        def state(name):
            try:
                return native.GetModel(pb2.GetModelRequest(name=name), timeout=T).state
            except grpc.RpcError as e:  # not registered yet: models load one after the other
                assert e.code() == grpc.StatusCode.NOT_FOUND, e
                return None

        wait_for(lambda: state("ghost") not in (None, pb2.LOADING) and state("mlp") == pb2.READY,
                 20, "models to settle")
        info = native.GetModel(pb2.GetModelRequest(name="ghost"), timeout=T)
        assert info.state == pb2.FAILED
        assert "ghost.pt2" in info.reason, info.reason
        listed = {m.name: m for m in native.ListModels(pb2.ListModelsRequest(), timeout=T).models}
        assert listed["ghost"].state == pb2.FAILED and listed["ghost"].reason == info.reason
        assert listed["mlp"].state == pb2.READY

        index = {m.name: m for m in kserve.RepositoryIndex(service_pb2.RepositoryIndexRequest(),
                                                            timeout=T).models}
        assert index["ghost"].state == "UNAVAILABLE"  # Triton's state for a failed load
        assert index["ghost"].reason == info.reason
        assert index["mlp"].state == "READY"
        ready_only = kserve.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True),
                                            timeout=T).models
        assert [m.name for m in ready_only] == ["mlp"]

        assert kserve.ServerLive(service_pb2.ServerLiveRequest(), timeout=T).live
        assert not kserve.ServerReady(service_pb2.ServerReadyRequest(), timeout=T).ready
        assert not kserve.ModelReady(service_pb2.ModelReadyRequest(name="ghost"), timeout=T).ready
        assert kserve.ModelReady(service_pb2.ModelReadyRequest(name="mlp"), timeout=T).ready
        # mlp serves; ghost answers UNAVAILABLE (exists but not READY).
        out = kserve.ModelInfer(kserve_request(service_pb2, "mlp", {"x": X}), timeout=T)
        assert out.outputs[0].name == "y"
        with pytest.raises(grpc.RpcError) as e:
            kserve.ModelInfer(kserve_request(service_pb2, "ghost", {"x": X}), timeout=T)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
    S = health_pb2.HealthCheckResponse
    assert health_check(d.url, "") == S.NOT_SERVING
    assert health_check(d.url, "mlp") == S.SERVING
    assert health_check(d.url, "ghost") == S.NOT_SERVING
    fams = parse_metrics(scrape(d))
    assert sample_value(fams, "pt2serve_model_state", model="ghost", state="FAILED") == 1
    assert sample_value(fams, "pt2serve_model_state", model="mlp", state="READY") == 1
    assert sample_value(fams, "pt2serve_model_load_failures_total", model="ghost") == 1
    assert d.stop() == 0
    assert "ghost" in d.stderr_text()  # the failure is logged


# -------------------------------------------------------------------------- graceful stop


def test_sigterm_drains_in_flight_requests(daemon_factory, model_dir):
    d = daemon_factory(models=[{"name": "cnn", "path": str(model_dir / "cnn.pt2"),
                                "num_runners": 1, "max_queue_size": 64}],
                       server={"drain_timeout_ms": 20000}, metrics=False)
    image = np.random.default_rng(2).random((1024, 3, 16, 16), np.float32)
    req = kserve_request(service_pb2, "cnn", {"image": image})
    records: list[tuple[float, float, str]] = []  # (start, end, code)
    lock = threading.Lock()
    stop = threading.Event()
    started = threading.Barrier(9)

    def client():
        with grpc.insecure_channel(d.url, options=BIG_OPTS + [
                ("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            stub.ModelInfer(req, timeout=T)  # connect + warm up
            started.wait(timeout=30)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    stub.ModelInfer(req, timeout=25)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                with lock:
                    records.append((t0, time.monotonic(), code))
                if code != "OK":
                    return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait(timeout=30)
    time.sleep(1.0)
    t_sig = time.monotonic()
    d.proc.send_signal(15)
    try:
        code = d.proc.wait(timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "client threads hung"
    assert code == 0, f"exit code {code}; stderr:\n{d.stderr_tail()}"

    bad = [r for r in records if r[2] not in ("OK", "UNAVAILABLE", "CANCELLED")]
    assert not bad, f"requests failed with unexpected codes: {bad[:5]}"
    # In flight at the signal (sent at least 20 ms before it, finished after it): all OK.
    in_flight = [r for r in records if r[0] < t_sig - 0.02 and r[1] > t_sig]
    assert in_flight, "no request was in flight at SIGTERM: the test did not exercise draining"
    failed = [r for r in in_flight if r[2] != "OK"]
    print(f"SIGTERM: {len(records)} requests, {len(in_flight)} in flight at the signal, "
          f"{sum(r[2] == 'OK' and r[1] > t_sig for r in records)} completed OK after it, "
          f"codes {sorted({r[2] for r in records})}, exit after "
          f"{max(r[1] for r in records) - t_sig:.3f}s")
    assert not failed, (f"{len(failed)}/{len(in_flight)} requests in flight at SIGTERM failed: "
                        f"{[(round(s - t_sig, 3), round(e - t_sig, 3), c) for s, e, c in failed]}")
    assert sum(1 for r in records if r[0] < t_sig and r[2] == "OK") >= 8
    log = d.stderr_text()
    assert "received SIGTERM" in log and "shutdown complete" in log, log[-3000:]
