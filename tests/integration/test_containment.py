"""Containment (isolation: process): a poison request must not take down the daemon.

tiny_lm (a one-block transformer of the zoo) embeds 100 tokens; ids >= 100 make its generated
kernel's bounds check throw inside an OpenMP parallel region, which calls std::terminate and
aborts the process running it (with isolation in_process: the whole daemon). With `isolation: process` the model runs in a pt2serve-worker
child process. These tests drive the REAL daemon with tritonclient, grpcio and pt2ctl:

* a poison request gets INTERNAL naming the model and the kernel's message; the daemon stays up;
  a second model's clients see 0 failures while it happens; the isolated model serves again
  (outputs equal to the eager reference) within seconds, every time (3 crashes in a row);
  GetModel / /metrics / health report the restarts;
* pushed weights and their version survive a worker crash, and so does the rollback target;
* the `-m ...:isolation=process` flag and `pt2ctl models load --isolation process` work, and a
  bad isolation value is a clear error.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ADMIN_TOKEN, BUILD_DIR, REPO, free_port, start_daemon

PT2CTL = BUILD_DIR / "tools" / "pt2ctl" / "pt2ctl"
EXPORTER = REPO / "tools" / "export" / "export_model.py"
RECOVERY_S = 10.0  # a restarted worker must serve again within this


def torch_aborts_on_poison() -> bool:
    """torch >= 2.13 (the packages' compiler) puts tiny_lm's bounds check inside an OpenMP
    region, so a poison request aborts the process; 2.11 compiles it where it returns."""
    import torch
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 13)
AUTH = [("authorization", f"Bearer {ADMIN_TOKEN}")]


def lm_inputs(tokens: np.ndarray) -> list:
    a = grpcclient.InferInput("tokens", list(tokens.shape), "INT64")
    a.set_data_from_numpy(tokens)
    return [a]


def mlp_inputs(x: np.ndarray) -> list:
    a = grpcclient.InferInput("x", list(x.shape), "FP32")
    a.set_data_from_numpy(x)
    return [a]


def check_lm(result, ref, rtol=1e-4, atol=1e-4) -> None:
    np.testing.assert_allclose(result.as_numpy("logits"), ref["outputs"]["logits"], rtol=rtol,
                               atol=atol)


def load_ref(path) -> dict:
    from safetensors.numpy import load_file
    tensors = load_file(str(path))
    return {"inputs": {k[6:]: v for k, v in tensors.items() if k.startswith("input.")},
            "outputs": {k[7:]: v for k, v in tensors.items() if k.startswith("output.")}}


@pytest.fixture(scope="module")
def lm_ref(model_dir) -> dict:
    return load_ref(model_dir / "tiny_lm.reference.safetensors")


def wait_serving(client, ref, limit=RECOVERY_S) -> float:
    """Seconds until tiny_lm answers the reference request correctly again."""
    start = time.monotonic()
    inputs = lm_inputs(ref["inputs"]["tokens"])
    while True:
        try:
            check_lm(client.infer("tiny_lm", inputs, client_timeout=10), ref)
            return time.monotonic() - start
        except InferenceServerException:
            if time.monotonic() - start > limit:
                raise


def metric(d, name: str, **labels) -> float | None:
    text = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture(scope="module")
def contained(tmp_path_factory, model_dir, daemon_path):
    d = start_daemon(tmp_path_factory.mktemp("contained"), models=[
        {"name": "tiny_lm", "path": str(model_dir / "tiny_lm.pt2"), "num_runners": 2,
         "isolation": "process"},
        {"name": "mlp", "path": str(model_dir / "mlp.pt2"), "num_runners": 1},
        {"name": "checked", "path": str(model_dir / "checked.pt2"), "num_runners": 1},
    ], admin=True, metrics=True)
    try:
        yield d
    finally:
        d.stop_clean()


def test_poison_request_is_contained(contained, refs, lm_ref, pb):
    if not torch_aborts_on_poison():
        pytest.skip("this torch compiles tiny_lm's bounds check where it returns: no crash")
    d = contained
    ref, mlp_ref = lm_ref, refs["mlp"]
    client = grpcclient.InferenceServerClient(d.url)
    wait_serving(client, ref)

    # Clients of another model keep going through the crashes: none may fail.
    stop = threading.Event()
    mlp_results = {"ok": 0, "failed": []}

    def mlp_client():
        c = grpcclient.InferenceServerClient(d.url)
        inputs = mlp_inputs(mlp_ref["inputs"]["x"])
        while not stop.is_set():
            try:
                r = c.infer("mlp", inputs, client_timeout=10)
                np.testing.assert_allclose(r.as_numpy("y"), mlp_ref["outputs"]["y"],
                                           rtol=1e-4, atol=1e-5)
                mlp_results["ok"] += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                mlp_results["failed"].append(repr(e))

    threads = [threading.Thread(target=mlp_client) for _ in range(2)]
    for t in threads:
        t.start()
    recoveries = []
    try:
        bad = np.full_like(ref["inputs"]["tokens"], 1000)
        for _ in range(3):
            with pytest.raises(InferenceServerException) as info:
                client.infer("tiny_lm", lm_inputs(bad), client_timeout=30)
            e = info.value
            assert e.status() == "StatusCode.INTERNAL", (e.status(), e.message())
            assert "tiny_lm" in e.message() and "index out of bounds" in e.message(), e.message()
            assert "Traceback" not in e.message() and "frame #" not in e.message()
            recoveries.append(wait_serving(client, ref))
            assert d.alive(), d.stderr_tail()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    print(f"\ncontainment: recovery after each crash {[round(r, 3) for r in recoveries]} s; "
          f"mlp requests meanwhile {mlp_results['ok']}, failed {len(mlp_results['failed'])}")
    assert mlp_results["failed"] == [], mlp_results["failed"][:3]
    assert mlp_results["ok"] > 0
    assert max(recoveries) < RECOVERY_S

    ip = pb.inference_pb2
    with d.channel() as ch:
        info = pb.inference_pb2_grpc.InferenceStub(ch).GetModel(
            ip.GetModelRequest(name="tiny_lm"), timeout=10)
    assert info.isolation == "process" and info.restarts == 3 and info.state == ip.READY
    assert metric(d, "pt2serve_model_restarts_total", model="tiny_lm") == 3
    assert metric(d, "pt2serve_model_restarts_total", model="mlp") == 0
    assert metric(d, "pt2serve_model_state", model="tiny_lm", state="READY") == 1
    log = d.stderr_text()
    assert "RESTARTING" in log and "index out of bounds" in log and "READY again" in log


def test_value_check_in_the_model_is_a_clear_error(contained, model_dir):
    """checked asserts (torch._assert_async) that its probabilities are non-negative: a
    value-dependent failure other than an index, here in an in_process model."""
    ref = load_ref(model_dir / "checked.reference.safetensors")
    client = grpcclient.InferenceServerClient(contained.url)

    def inputs(p):
        a = grpcclient.InferInput("probs", list(p.shape), "FP32")
        a.set_data_from_numpy(p)
        return [a]

    for _ in range(3):
        with pytest.raises(InferenceServerException) as info:
            client.infer("checked", inputs(-ref["inputs"]["probs"]), client_timeout=10)
        assert info.value.status() == "StatusCode.INTERNAL"
        assert "probabilities must be non-negative" in info.value.message()
        r = client.infer("checked", inputs(ref["inputs"]["probs"]), client_timeout=10)
        np.testing.assert_allclose(r.as_numpy("scores"), ref["outputs"]["scores"], rtol=1e-4,
                                   atol=1e-5)
    assert contained.alive()


def test_weights_and_versions_survive_a_worker_crash(contained, lm_ref, tmp_path):
    if not PT2CTL.is_file():
        pytest.skip(f"pt2ctl not built at {PT2CTL}")
    d = contained
    weights, reference = tmp_path / "s7.safetensors", tmp_path / "s7.reference.safetensors"
    subprocess.run([sys.executable, str(EXPORTER), "weights", "--model", "tiny_lm", "--seed",
                    "7", "--out", str(weights), "--reference", str(reference)], check=True,
                   capture_output=True, timeout=300)
    ref7 = load_ref(reference)
    pt2ctl = [str(PT2CTL), "--admin-address", d.admin_url, "--token", ADMIN_TOKEN]
    subprocess.run([*pt2ctl, "weights", "push", "tiny_lm", str(weights), "--version", "s7",
                    "--swap"], check=True, capture_output=True, timeout=60)

    client = grpcclient.InferenceServerClient(d.url)
    inputs = lm_inputs(ref7["inputs"]["tokens"])
    r = client.infer("tiny_lm", inputs, client_timeout=10)
    check_lm(r, ref7)
    assert r.get_response().parameters["weights_version"].string_param == "s7"

    # Crash the worker with a poison request; it comes back on s7, with "initial" as PREVIOUS.
    with pytest.raises(InferenceServerException):
        client.infer("tiny_lm", lm_inputs(np.full_like(ref7["inputs"]["tokens"], -5)),
                     client_timeout=30)
    wait_serving(client, ref7)
    r = client.infer("tiny_lm", inputs, client_timeout=10)
    assert r.get_response().parameters["weights_version"].string_param == "s7"
    subprocess.run([*pt2ctl, "weights", "rollback", "tiny_lm"], check=True, capture_output=True,
                   timeout=60)
    wait_serving(client, lm_ref)
    r = client.infer("tiny_lm", lm_inputs(lm_ref["inputs"]["tokens"]), client_timeout=10)
    assert r.get_response().parameters["weights_version"].string_param == "initial"


def test_isolation_flag_admin_load_and_bad_values(daemon_factory, model_dir, lm_ref,
                                                  daemon_path, tmp_path, pb):
    # -m NAME=PATH:isolation=process
    port = free_port()
    proc = subprocess.Popen([str(daemon_path), "--admin-address", "", "--metrics-address", "",
                             "--inference-address", f"127.0.0.1:{port}",
                             "-m", f"tiny_lm={model_dir / 'tiny_lm.pt2'}:isolation=process"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.is_model_ready("tiny_lm"):
                    break
            except InferenceServerException:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "daemon not ready"
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "pt2serve-worker"],
                                 capture_output=True, text=True).stdout.split()
        assert len(workers) == 1, workers
        wait_serving(client, lm_ref)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()[-3000:]
    # The worker went with the daemon.
    assert not os.path.exists(f"/proc/{workers[0]}") or \
        open(f"/proc/{workers[0]}/stat").read().split()[2] == "Z"

    p = subprocess.run([str(daemon_path), "--admin-address", "", "--metrics-address", "",
                        "--inference-address", f"127.0.0.1:{free_port()}",
                        "-m", f"mlp={model_dir / 'mlp.pt2'}:isolation=sandbox"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "isolation" in p.stderr and "sandbox" in p.stderr, p.stderr

    # Admin LoadModel with isolation (through pt2ctl), and a bad value through grpcio.
    if not PT2CTL.is_file():
        pytest.skip(f"pt2ctl not built at {PT2CTL}")
    repo = tmp_path / "repo"
    repo.mkdir()
    # A copy: a symlink leaving the repository would be refused.
    shutil.copy(model_dir / "mlp.pt2", repo / "mlp.pt2")
    d = daemon_factory(models=[], server={"model_repository": str(repo)}, admin=True,
                       wait="live")
    pt2ctl = [str(PT2CTL), "--admin-address", d.admin_url, "--token", ADMIN_TOKEN]
    out = subprocess.run([*pt2ctl, "models", "load", "mlp", "mlp.pt2", "--isolation",
                          "process"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with d.channel() as ch:
        info = pb.inference_pb2_grpc.InferenceStub(ch).GetModel(
            pb.inference_pb2.GetModelRequest(name="mlp"), timeout=10)
    assert info.isolation == "process" and info.restarts == 0
    bad = subprocess.run([*pt2ctl, "models", "load", "mlp2", "mlp.pt2", "--isolation", "x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "isolation" in (bad.stderr + bad.stdout)


def extraction_owners() -> dict[str, int]:
    """Package extraction directories under /tmp marked by pt2serve processes: dir -> owner PID
    (runtime/extraction_dirs.h)."""
    owners = {}
    for entry in os.scandir("/tmp"):
        try:
            line = open(os.path.join(entry.path, ".pt2serve-owner")).read()
        except OSError:
            continue
        m = re.search(r"\bpid=(\d+)\b", line)
        if m:
            owners[entry.path] = int(m.group(1))
    return owners


def parent_pid(pid: int) -> int | None:
    """The parent of a running process; None once it has exited (zombies included)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    state, ppid = stat[stat.rfind(")") + 2:].split()[:2]
    return None if state in ("Z", "X") else int(ppid)


def test_extraction_dirs_of_dead_processes_are_removed(tmp_path, model_dir, refs):
    """A killed worker's, and a killed daemon's, /tmp/aotinductor_* directories do not pile up:
    the daemon removes a worker's when it reaps it, and the next daemon removes those of a
    daemon that was SIGKILLed (it never got to)."""
    mlp_ref = refs["mlp"]
    models = [{"name": "iso", "path": str(model_dir / "mlp.pt2"), "num_runners": 1,
               "isolation": "process"},
              {"name": "mlp", "path": str(model_dir / "mlp.pt2"), "num_runners": 1}]

    def serving(d, model, limit=RECOVERY_S):
        c = grpcclient.InferenceServerClient(d.url)
        start = time.monotonic()
        while True:
            try:
                r = c.infer(model, mlp_inputs(mlp_ref["inputs"]["x"]), client_timeout=10)
                np.testing.assert_allclose(r.as_numpy("y"), mlp_ref["outputs"]["y"], rtol=1e-4,
                                           atol=1e-5)
                return
            except InferenceServerException:
                if time.monotonic() - start > limit:
                    raise
                time.sleep(0.05)

    def wait_for(predicate, what, limit=RECOVERY_S):
        deadline = time.monotonic() + limit
        while not predicate():
            assert time.monotonic() < deadline, f"{what} within {limit}s; marked: {extraction_owners()}"
            time.sleep(0.05)

    first = start_daemon(tmp_path / "first", models=models)
    try:
        serving(first, "iso")
        serving(first, "mlp")
        own = [p for p in extraction_owners().values() if p == first.pid]
        assert own, "the daemon marked no extraction directory of its in-process model"
        workers = {path: pid for path, pid in extraction_owners().items()
                   if parent_pid(pid) == first.pid}
        assert len(workers) == 1, workers
        (worker_dir, worker), = workers.items()
        assert os.path.isdir(worker_dir)
        for _ in range(3):  # each restart used to leave one directory behind
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: not os.path.exists(worker_dir), "the killed worker's directory gone")
            serving(first, "iso")
            workers = {path: pid for path, pid in extraction_owners().items()
                       if parent_pid(pid) == first.pid}
            assert len(workers) == 1 and worker not in workers.values(), workers
            (worker_dir, worker), = workers.items()
        first.kill()  # SIGKILL: no destructor removes anything
        first_pid = first.pid
    finally:
        first.kill()
    wait_for(lambda: parent_pid(worker) is None, "the orphaned worker exits")
    left = [path for path, pid in extraction_owners().items() if pid in (first_pid, worker)]
    assert left, "a SIGKILLed daemon's directories should still be there before the next start"

    second = start_daemon(tmp_path / "second", models=models[1:])
    try:
        serving(second, "mlp")
        assert not [p for p in left if os.path.exists(p)], left
        assert "left by exited pt2serve processes" in second.stderr_text()
    finally:
        second.stop_clean()
