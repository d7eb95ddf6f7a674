"""Hardening of the daemon against hostile or broken clients (issue 14), end to end.

ModelStreamInfer and ModelInfer: cancellation reaches every queued request, a client that never reads is not
read without bound, a message that does not parse ends the stream with an error. /metrics:
silent and trickling clients block neither scrapers nor shutdown; unloaded models' series go.
Signals: a second SIGTERM during the drain exits at once. Admin: failed authentications are
logged with the peer (rate-limited) and throttled. Compressed requests are refused unless
configured. Runtime errors reach clients short; access-log lines cannot be forged.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import (RPC_TIMEOUT, kserve_request, metric, parse_metrics, sample_value, scrape,
                      wait_for)

STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def mlp_only(model_dir, **extra):
    return [{"name": "mlp", "path": str(model_dir / "mlp.pt2"), "num_runners": 1, **extra}]


# ------------------------------------------------------------------------ ModelStreamInfer


def test_stream_cancel_cancels_every_queued_request(daemon_factory, model_dir):
    d = daemon_factory(models=[{"name": "cnn", "path": str(model_dir / "cnn.pt2"),
                                "num_runners": 1, "max_queue_size": 100}])
    total = 15
    image = np.random.default_rng(0).random((1024, 3, 16, 16), dtype=np.float32)
    hold = threading.Event()

    def requests():
        for i in range(total):
            yield kserve_request(service_pb2, "cnn", {"image": image}, id=str(i))
        hold.wait(30)  # keep the stream open (no half-close) until cancelled

    with d.channel() as ch:
        call = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(requests())
        wait_for(lambda: metric(d, "pt2serve_queue_depth", model="cnn") >= 5, 30,
                 "requests queued behind the one runner")
        queued = metric(d, "pt2serve_queue_depth", model="cnn")
        call.cancel()
        hold.set()
    wait_for(lambda: metric(d, "pt2serve_queue_depth", model="cnn") == 0
             and metric(d, "pt2serve_inflight_requests", model="cnn") == 0, 60, "queue drained")
    families = parse_metrics(scrape(d))
    ok = sample_value(families, "pt2serve_requests_total", model="cnn", code="OK")
    cancelled = sample_value(families, "pt2serve_requests_total", model="cnn", code="CANCELLED")
    # Requests the client had not sent yet were never read; each one read ran or was cancelled.
    assert ok + cancelled <= total and ok + cancelled >= queued, (ok, cancelled, queued)
    # Two may leave the queue for the runner between the scrape and the cancel.
    assert cancelled >= queued - 2, f"{cancelled} of {queued} queued requests were cancelled"


def test_unary_cancel_cancels_the_queued_request(daemon_factory, model_dir):
    """Client-cancelled ModelInfer calls leave the queue without running. Their reactor runs
    OnCancel on the gRPC thread that sees the cancellation (InferReactor is inlineable)."""
    d = daemon_factory(models=[{"name": "cnn", "path": str(model_dir / "cnn.pt2"),
                                "num_runners": 1, "max_queue_size": 100}])
    total = 15
    image = np.random.default_rng(0).random((1024, 3, 16, 16), dtype=np.float32)
    with d.channel() as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        calls = [stub.ModelInfer.future(kserve_request(service_pb2, "cnn", {"image": image},
                                                       id=str(i)), timeout=60)
                 for i in range(total)]
        wait_for(lambda: metric(d, "pt2serve_queue_depth", model="cnn") >= 5, 30,
                 "requests queued behind the one runner")
        queued = metric(d, "pt2serve_queue_depth", model="cnn")
        for call in calls:
            call.cancel()
        wait_for(lambda: metric(d, "pt2serve_queue_depth", model="cnn") == 0
                 and metric(d, "pt2serve_inflight_requests", model="cnn") == 0, 60,
                 "queue drained")
        families = parse_metrics(scrape(d))
        ok = sample_value(families, "pt2serve_requests_total", model="cnn", code="OK")
        cancelled = sample_value(families, "pt2serve_requests_total", model="cnn",
                                 code="CANCELLED")
        # A call cancelled before the server read it is never counted.
        assert queued <= ok + cancelled <= total, (ok, cancelled, queued)
        # Two may leave the queue for the runner between the scrape and the cancel.
        assert cancelled >= queued - 2, f"{cancelled} of {queued} queued requests were cancelled"
        # Still serving.
        r = stub.ModelInfer(kserve_request(service_pb2, "cnn", {"image": image[:2]}),
                            timeout=RPC_TIMEOUT)
        assert len(r.raw_output_contents) == 1


def test_stream_client_that_never_reads_is_not_read_without_bound(daemon_factory, model_dir):
    d = daemon_factory(models=mlp_only(model_dir, max_queue_size=10000))
    x = np.ones((1024, 16), np.float32)  # 64 KiB in, 32 KiB out per request
    consumed = 0
    stop = threading.Event()

    def requests():
        nonlocal consumed
        for _ in range(4000):
            if stop.is_set():
                return
            consumed += 1
            yield kserve_request(service_pb2, "mlp", {"x": x})
        stop.wait(30)

    before = rss_bytes(d.pid)
    with d.channel() as ch:
        call = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(requests())
        time.sleep(4)  # never read a response
        taken = consumed
        grown = rss_bytes(d.pid) - before
        call.cancel()
        stop.set()
    time.sleep(1)
    after = rss_bytes(d.pid) - before
    # Measured: 247 of 4000 read, +21 MiB, +12 MiB after the cancel (before the fix: all 4000,
    # +285 MiB, +290 MiB after the cancel).
    assert taken < 600, f"the daemon read {taken} requests of a client that reads nothing"
    assert grown < 150 << 20, f"the daemon grew by {grown >> 20} MiB"
    assert after < 64 << 20, f"{after >> 20} MiB still held after the cancel"
    # Still serving, on a fresh stream.
    with d.channel() as ch:
        got = list(service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(
            iter([kserve_request(service_pb2, "mlp", {"x": x[:2]})]), timeout=RPC_TIMEOUT))
    assert len(got) == 1 and not got[0].error_message


def test_stream_message_that_does_not_parse_ends_the_stream_with_an_error(server):
    good = kserve_request(service_pb2, "mlp", {"x": np.ones((2, 16), np.float32)},
                          id="first").SerializeToString()
    with server.channel() as ch:
        stream = ch.stream_stream(STREAM_METHOD)  # raw bytes both ways
        call = stream(iter([good, b"\xff\xff\xff\xff", good]), timeout=RPC_TIMEOUT)
        answers = []
        with pytest.raises(grpc.RpcError) as e:
            for raw in call:
                answers.append(service_pb2.ModelStreamInferResponse.FromString(raw))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "stream message 2 is not a valid ModelInferRequest" in e.value.details()
    assert [a.infer_response.id for a in answers] == ["first"]
    assert not answers[0].error_message


# ---------------------------------------------------------------------------------- metrics


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_silent_and_trickling_metrics_clients_do_not_block_scrapers(server):
    idle = [connect(server.metrics_port) for _ in range(20)]
    trickler = connect(server.metrics_port)
    trickler.sendall(b"GET /met")
    try:
        t0 = time.monotonic()
        text = scrape(server, timeout=5)
        assert "pt2serve_requests_total" in text or "pt2serve_model_state" in text
        assert time.monotonic() - t0 < 2, "a scrape waited behind silent clients"
    finally:
        for s in idle + [trickler]:
            s.close()


def test_trickling_metrics_client_does_not_hold_shutdown(daemon_factory, model_dir):
    d = daemon_factory(models=mlp_only(model_dir))
    trickler = connect(d.metrics_port)
    stop = threading.Event()

    def trickle():
        for byte in b"GET /metrics HTTP/1.1\r\n" * 10:
            if stop.wait(0.5):
                return
            try:
                trickler.send(bytes([byte]))
            except OSError:
                return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    time.sleep(1)
    t0 = time.monotonic()
    try:
        assert d.stop(timeout=10) == 0
    finally:
        stop.set()
        trickler.close()
    assert time.monotonic() - t0 < 5, "shutdown waited for a trickling /metrics client"


def test_unloaded_models_leave_metrics(daemon_factory, model_dir, pb):
    d = daemon_factory(models=mlp_only(model_dir), admin=True,
                       server={"model_repository": str(model_dir)})
    admin = pb.admin_pb2_grpc.AdminStub(grpc.insecure_channel(d.admin_url))
    auth = [("authorization", f"Bearer {d.token}")]
    admin.LoadModel(pb.admin_pb2.LoadModelRequest(name="extra", package_path="mlp.pt2"),
                    metadata=auth, timeout=60)
    with d.channel() as ch:
        service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
            kserve_request(service_pb2, "extra", {"x": np.ones((1, 16), np.float32)}),
            timeout=RPC_TIMEOUT)
    assert 'model="extra"' in scrape(d)
    admin.UnloadModel(pb.admin_pb2.UnloadModelRequest(name="extra"), metadata=auth, timeout=60)
    text = scrape(d)
    assert 'model="extra"' not in text, [l for l in text.splitlines() if 'model="extra"' in l][:5]
    assert 'model="mlp"' in text


# ---------------------------------------------------------------------------------- signals


def test_second_sigterm_during_the_drain_exits_at_once(daemon_factory, model_dir):
    d = daemon_factory(models=mlp_only(model_dir),
                       server={"drain_delay_ms": 0, "drain_timeout_ms": 120000})
    hold = threading.Event()

    def requests():
        yield kserve_request(service_pb2, "mlp", {"x": np.ones((1, 16), np.float32)})
        hold.wait(60)  # an open stream the drain waits for

    ch = d.channel()
    call = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(requests())
    next(call)  # the stream is live
    try:
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert d.alive(), "the drain should still be waiting for the open stream"
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        code = d.proc.wait(timeout=10)
        assert time.monotonic() - t0 < 3
        assert code == 1
        assert "during shutdown: exiting now without draining" in d.stderr_text()
    finally:
        hold.set()
        ch.close()


# ------------------------------------------------------------------------------------ admin


def test_failed_admin_authentication_is_logged_and_throttled(daemon_factory, model_dir, pb):
    d = daemon_factory(models=mlp_only(model_dir), admin=True)
    ch = grpc.insecure_channel(d.admin_url)
    admin = pb.admin_pb2_grpc.AdminStub(ch)
    bad = [("authorization", "Bearer wrong")]
    req = pb.admin_pb2.ConstantBufferStatusRequest(model="mlp")
    t0 = time.monotonic()
    futures = [admin.GetConstantBufferStatus.future(req, metadata=bad, timeout=RPC_TIMEOUT)
               for _ in range(1000)]
    codes = []
    for f in futures:
        try:
            f.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    elapsed = time.monotonic() - t0
    assert grpc.StatusCode.OK not in codes
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 100
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 900
    # The right token is refused too while the host is locked out (no oracle for guesses).
    with pytest.raises(grpc.RpcError) as e:
        admin.GetConstantBufferStatus(req, metadata=[("authorization", f"Bearer {d.token}")],
                                      timeout=RPC_TIMEOUT)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed admin authentications" in e.value.details()
    log = d.stderr_text()
    lines = [l for l in log.splitlines() if "admin authentication failed from ipv4:127.0.0.1:" in l]
    assert 1 <= len(lines) <= 3 + int(elapsed), f"{len(lines)} log lines in {elapsed:.1f}s"
    assert "refusing ipv4:127.0.0.1 for up to 10 s after 100 failed authentications" in log
    ch.close()


# ------------------------------------------------------------------------------ compression


def test_compressed_requests_are_refused_before_inflating(server):
    x = np.zeros((48 << 20) // 64, np.float32).reshape(-1, 16)  # 48 MiB of zeros
    request = kserve_request(service_pb2, "mlp", {"x": x})
    before = rss_bytes(server.pid)
    with grpc.insecure_channel(server.url, compression=grpc.Compression.Gzip, options=[
            ("grpc.max_send_message_length", 256 << 20)]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, e.value.details()
    assert "gzip" in e.value.details()
    grown = rss_bytes(server.pid) - before
    assert grown < 24 << 20, f"the daemon grew by {grown >> 20} MiB for a refused request"


def test_compressed_requests_served_when_configured(daemon_factory, model_dir, refs):
    d = daemon_factory(models=mlp_only(model_dir), server={"allow_compressed_requests": True})
    with grpc.insecure_channel(d.url, compression=grpc.Compression.Gzip) as ch:
        r = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
            kserve_request(service_pb2, "mlp", refs["mlp"]["inputs"]), timeout=RPC_TIMEOUT)
    assert r.outputs[0].name == "y"


# --------------------------------------------------------------------------- what is echoed


def test_runtime_errors_reach_clients_short(daemon_factory, model_dir):
    from safetensors.numpy import load_file

    d = daemon_factory(models=[{"name": "checked", "path": str(model_dir / "checked.pt2"),
                                "num_runners": 1}])
    probs = load_file(str(model_dir / "checked.reference.safetensors"))["input.probs"]
    with d.channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                kserve_request(service_pb2, "checked", {"probs": -probs}), timeout=RPC_TIMEOUT)
    details = e.value.details()
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "probabilities must be non-negative" in details
    assert "(details in the server log)" in details
    assert len(details) < 300 and "\n" not in details and "frame #" not in details
    assert not re.search(r"/[\w.-]+/", details), details
    assert "request '' failed:" in d.stderr_text()  # the detail went to the log


def test_access_log_lines_cannot_be_forged(daemon_factory, model_dir):
    d = daemon_factory(models=mlp_only(model_dir), extra_args=("--access-log",))
    with d.channel() as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        stub.ModelInfer(kserve_request(service_pb2, "mlp", {"x": np.ones((1, 16), np.float32)},
                                       id="r1\nkserve model=mlp id=FORGED code=OK\x1b[2J"),
                        timeout=RPC_TIMEOUT)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(kserve_request(service_pb2, "evil\r\nname",
                                           {"x": np.ones((1, 16), np.float32)}),
                            timeout=RPC_TIMEOUT)
    wait_for(lambda: "evil" in d.stderr_text(), 5, "the access log line")
    log = d.stderr_text()
    assert not any(line.lstrip().startswith("kserve model=mlp id=FORGED") for line in
                   log.splitlines())
    assert "id=r1\\nkserve model=mlp id=FORGED code=OK\\x1b[2J" in log
    assert "model=evil\\r\\nname" in log


def test_admin_background_operations_are_bounded(daemon_factory, model_dir, pb):
    """30 LoadModel calls at once: at most 8 run (each on its own thread); the rest are refused
    at once with RESOURCE_EXHAUSTED instead of each spawning a thread."""
    d = daemon_factory(models=mlp_only(model_dir), admin=True,
                       server={"model_repository": str(model_dir)})
    auth = [("authorization", f"Bearer {d.token}")]
    with grpc.insecure_channel(d.admin_url) as ch:
        admin = pb.admin_pb2_grpc.AdminStub(ch)
        futures = [admin.LoadModel.future(
            pb.admin_pb2.LoadModelRequest(name=f"m{i}", package_path="mlp.pt2"),
            metadata=auth, timeout=120) for i in range(30)]
        refused, loaded = [], 0
        for f in futures:
            try:
                f.result()
                loaded += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
                refused.append(e.details())
    assert loaded >= 8 and refused, (loaded, len(refused))
    assert "too many admin operations in progress (8)" in refused[0]
