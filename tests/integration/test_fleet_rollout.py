"""`pt2ctl weights rollout` / `rollback --endpoints` against 4 REAL daemons on 127.0.0.1 under
client load: two-phase weight rollouts across a fleet.

* success: every replica serves the new version, 0 failed requests, skew reported;
* a replica killed while the rollout stages -> aborted, no replica changes what it serves;
* a replica stopped (SIGSTOP) while it stages -> stage timeout, abort, nothing changed;
* a half-done commit (some replicas swapped) -> running the rollout again converges, and a
  repeated commit of the active version never flips back (compare-and-swap);
* fleet rollback.

Failures during staging are injected with a loopback TCP proxy in front of one replica's admin
port: it passes the rollout's first connection (the inspect phase) and holds the next (the
stage phase) until the test has killed or stopped the replica behind it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import ADMIN_TOKEN, BUILD_DIR, kserve_request, start_daemon

PT2CTL = BUILD_DIR / "tools" / "pt2ctl" / "pt2ctl"
REPLICAS = 4

pytestmark = pytest.mark.skipif(not PT2CTL.is_file(), reason=f"pt2ctl not built at {PT2CTL}")


# --------------------------------------------------------------------------------- helpers


class HoldingProxy:
    """127.0.0.1 TCP proxy to `target_port`. Connections from number `hold_from` on (0-based)
    wait until release(); `holding` is set when the first of them arrives."""

    def __init__(self, target_port: int, hold_from: int = 1):
        self.target_port = target_port
        self.hold_from = hold_from
        self.holding = threading.Event()
        self._release = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._count = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def release(self):
        self._release.set()

    def close(self):
        self._stop.set()
        self._release.set()
        self._listener.close()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            index = self._count
            self._count += 1
            threading.Thread(target=self._pump, args=(client, index), daemon=True).start()

    def _pump(self, client: socket.socket, index: int):
        if index >= self.hold_from:
            self.holding.set()
            self._release.wait(timeout=60)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()  # the replica is gone: the client sees the connection fail
            return

        def copy(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=copy, args=(upstream, client), daemon=True)
        t.start()
        copy(client, upstream)
        t.join(timeout=5)
        client.close()
        upstream.close()


class Load:
    """Client threads sending KServe inferences round robin to every live replica; records
    (replica, weights_version, output) per response and every failure."""

    def __init__(self, daemons, x: np.ndarray, threads: int = 4):
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self.daemons = list(daemons)
        self.skip: set[int] = set()
        self.lock = threading.Lock()
        self.results: list[tuple[int, str, bytes]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        req = kserve_request(service_pb2, "mlp", {"x": x})
        channels = [d.channel() for d in self.daemons]
        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
        self._channels = channels

        def run(offset: int):
            i = offset
            while not self._stop.is_set():
                i = (i + 1) % len(stubs)
                if i in self.skip:
                    continue
                try:
                    r = stubs[i].ModelInfer(req, timeout=10)
                    with self.lock:
                        self.results.append((i, r.parameters["weights_version"].string_param,
                                             r.raw_output_contents[0]))
                except grpc.RpcError as e:
                    if i in self.skip:
                        continue  # the test took this replica down on purpose
                    with self.lock:
                        self.failures.append(f"replica {i}: {e.code().name}: {e.details()}")

        self._threads = [threading.Thread(target=run, args=(k,)) for k in range(threads)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        for c in self._channels:
            c.close()

    def versions(self, replica: int | None = None) -> set[str]:
        with self.lock:
            return {v for i, v, _ in self.results if replica is None or i == replica}

    def check_consistent(self):
        """Every response of one version carries the same output (no mixed weights)."""
        by_version: dict[str, bytes] = {}
        with self.lock:
            for i, v, out in self.results:
                assert by_version.setdefault(v, out) == out, f"replica {i}: '{v}' output differs"
        return by_version


@pytest.fixture
def fleet(tmp_path, model_dir, daemon_path):
    """4 daemons serving mlp with an admin listener, started in parallel; killed at teardown."""
    from concurrent.futures import ThreadPoolExecutor

    def start(i):
        return start_daemon(tmp_path / f"replica{i}", admin=True, metrics=False,
                            models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2"),
                                     "num_runners": 2}])

    with ThreadPoolExecutor(REPLICAS) as pool:
        futures = [pool.submit(start, i) for i in range(REPLICAS)]
    daemons = [f.result() for f in futures if f.exception() is None]
    try:
        assert len(daemons) == REPLICAS, [str(f.exception()) for f in futures if f.exception()]
        yield daemons
    finally:
        for d in daemons:
            d.kill()


@pytest.fixture
def weights_v2(tmp_path, model_dir) -> Path:
    from safetensors.numpy import load_file, save_file

    base = load_file(str(model_dir / "mlp.weights.safetensors"))
    path = tmp_path / "mlp-v2.safetensors"
    rng = np.random.default_rng(1)
    save_file({k: (v + rng.normal(0, 0.2, v.shape)).astype(v.dtype) for k, v in base.items()},
              str(path))
    return path


def pt2ctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(PT2CTL), "--token", ADMIN_TOKEN, *args], capture_output=True,
                          text=True, timeout=timeout)


def rollout_args(endpoints: list[str], weights: Path, version: str = "v2", *extra: str):
    return ("--json", "weights", "rollout", "mlp", str(weights), "--version", version,
            "--endpoints", ",".join(endpoints), *extra)


def status(daemon) -> dict:
    p = pt2ctl("--json", "--admin-address", daemon.admin_url, "weights", "status", "mlp")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def assert_unchanged(daemons, version="initial"):
    for d in daemons:
        s = status(d)
        assert s["active"]["version"] == version, s
        assert not (s["inactive"]["state"] == "STAGED" and s["inactive"]["version"] == "v2"), s


# ----------------------------------------------------------------------------------- tests


def test_rollout_commits_everywhere_under_load(fleet, weights_v2, refs):
    endpoints = [d.admin_url for d in fleet]
    with Load(fleet, refs["mlp"]["inputs"]["x"]) as load:
        p = pt2ctl(*rollout_args(endpoints, weights_v2))
        time.sleep(0.3)
        after = len(load.results)
        time.sleep(0.3)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["result"] == "committed"
    assert len(report["sha256"]) == 64
    assert [r["active"] for r in report["replicas"]] == ["v2"] * REPLICAS
    assert {r["staged_sha256"] for r in report["replicas"]} == {report["sha256"]}
    assert all(r["commit"] == "committed" for r in report["replicas"])
    assert 0 <= report["commit_skew_ms"] < 2000, report
    print(f"\nrollout of 4 replicas: {report['seconds']:.3f} s, commit skew "
          f"{report['commit_skew_ms']:.2f} ms")
    assert load.failures == [], load.failures[:5]
    outputs = load.check_consistent()
    assert set(outputs) == {"initial", "v2"} and outputs["initial"] != outputs["v2"]
    with load.lock:
        late = load.results[after:]
    assert late and {v for _, v, _ in late} == {"v2"}, "a replica still serves 'initial'"
    for d in fleet:
        assert status(d)["active"]["version"] == "v2"

    # Rolling out the same version again: every replica is already on it; nothing changes.
    again = pt2ctl(*rollout_args(endpoints, weights_v2))
    assert again.returncode == 0, again.stdout + again.stderr
    r = json.loads(again.stdout)
    assert r["result"] == "committed" and {x["stage"] for x in r["replicas"]} == {"already active"}

    # Fleet rollback: everyone back on 'initial'.
    back = pt2ctl("--json", "weights", "rollback", "mlp", "--endpoints", ",".join(endpoints))
    assert back.returncode == 0, back.stdout + back.stderr
    rb = json.loads(back.stdout)
    assert rb["result"] == "rolled back" and {x["active"] for x in rb["replicas"]} == {"initial"}


def test_replica_killed_during_staging_changes_nothing(fleet, weights_v2, refs):
    proxy = HoldingProxy(fleet[3].admin_port)
    endpoints = [d.admin_url for d in fleet[:3]] + [f"127.0.0.1:{proxy.port}"]
    try:
        with Load(fleet, refs["mlp"]["inputs"]["x"]) as load:
            proc = subprocess.Popen([str(PT2CTL), "--token", ADMIN_TOKEN,
                                     *rollout_args(endpoints, weights_v2, "v2",
                                                   "--stage-timeout", "30")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proxy.holding.wait(timeout=20), "the rollout never started staging"
            # The other replicas finish staging while replica 3's stage is in flight.
            deadline = time.monotonic() + 20
            while not all(status(d)["inactive"]["state"] == "STAGED" for d in fleet[:3]):
                assert time.monotonic() < deadline, "the healthy replicas never staged"
                time.sleep(0.05)
            load.skip.add(3)
            fleet[3].kill()
            proxy.release()
            out, err = proc.communicate(timeout=60)
            time.sleep(0.3)
    finally:
        proxy.close()
    assert proc.returncode == 1, out + err
    report = json.loads(out)
    assert report["result"] == "aborted"
    rows = {r["endpoint"]: r for r in report["replicas"]}
    assert rows[endpoints[3]]["stage"] == "failed" and rows[endpoints[3]]["error"]
    assert all(rows[e]["commit"] == "aborted" for e in endpoints[:3]), report
    assert "ABORTED" not in out and "rollout aborted" in err
    assert_unchanged(fleet[:3])
    assert load.failures == [], load.failures[:5]
    assert load.versions() == {"initial"}


def test_stopped_replica_times_out_and_aborts(fleet, weights_v2, refs):
    proxy = HoldingProxy(fleet[3].admin_port)
    endpoints = [d.admin_url for d in fleet[:3]] + [f"127.0.0.1:{proxy.port}"]
    stopped = False
    try:
        with Load(fleet, refs["mlp"]["inputs"]["x"]) as load:
            t0 = time.monotonic()
            proc = subprocess.Popen([str(PT2CTL), "--token", ADMIN_TOKEN,
                                     *rollout_args(endpoints, weights_v2, "v2",
                                                   "--stage-timeout", "2",
                                                   "--commit-timeout", "1")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proxy.holding.wait(timeout=20)
            load.skip.add(3)
            os.kill(fleet[3].pid, signal.SIGSTOP)
            stopped = True
            proxy.release()
            out, err = proc.communicate(timeout=60)
            elapsed = time.monotonic() - t0
            os.kill(fleet[3].pid, signal.SIGCONT)
            stopped = False
            time.sleep(0.5)
    finally:
        if stopped:
            os.kill(fleet[3].pid, signal.SIGCONT)
        proxy.close()
    assert proc.returncode == 1, out + err
    report = json.loads(out)
    assert report["result"] == "aborted"
    bad = next(r for r in report["replicas"] if r["endpoint"] == endpoints[3])
    assert bad["stage"] == "failed" and "DEADLINE_EXCEEDED" in bad["error"], bad
    assert elapsed < 15, f"the rollout took {elapsed:.1f} s despite a 2 s stage timeout"
    assert bad["commit"] == "abort failed", bad  # the stopped replica cannot answer the abort
    # Nothing changed anywhere, the resumed replica included.
    assert_unchanged(fleet[:3])
    assert status(fleet[3])["active"]["version"] == "initial"
    assert load.failures == [], load.failures[:5]
    assert load.versions() == {"initial"}


def test_retrying_a_half_done_commit_converges(fleet, weights_v2, refs):
    endpoints = [d.admin_url for d in fleet]
    # A rollout that died after committing on 2 of 4 replicas.
    for d in fleet:
        p = pt2ctl("--admin-address", d.admin_url, "weights", "push", "mlp", str(weights_v2),
                   "--version", "v2")
        assert p.returncode == 0, p.stderr
    for d in fleet[:2]:
        p = pt2ctl("--admin-address", d.admin_url, "weights", "swap", "mlp", "--expect", "v2")
        assert p.returncode == 0, p.stderr
    # Its commit retried on a replica that already committed: succeeds, does not flip back.
    p = pt2ctl("--json", "--admin-address", fleet[0].admin_url, "weights", "swap", "mlp",
               "--expect", "v2")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["already_active"] is True
    assert status(fleet[0])["active"]["version"] == "v2"

    with Load(fleet, refs["mlp"]["inputs"]["x"]) as load:
        p = pt2ctl(*rollout_args(endpoints, weights_v2))
        time.sleep(0.3)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["result"] == "committed"
    stages = [r["stage"] for r in report["replicas"]]
    assert stages == ["already active"] * 2 + ["staged"] * 2, report
    for d in fleet:
        assert status(d)["active"]["version"] == "v2"
    assert load.failures == []
    load.check_consistent()


def test_rollout_refuses_bad_input(fleet, weights_v2, tmp_path):
    endpoints = [d.admin_url for d in fleet]
    p = pt2ctl("weights", "rollout", "mlp", str(weights_v2), "--version", "v2")
    assert p.returncode == 2 and "rollout needs --endpoints, --headless or --dns-srv" in p.stderr
    p = pt2ctl("weights", "rollout", "mlp", str(weights_v2), "--version", "v2", "--dns-srv",
               "_grpc-admin._tcp.no-such-service.invalid")
    assert p.returncode == 2 and "--dns-srv '_grpc-admin._tcp.no-such-service.invalid'" in p.stderr
    p = pt2ctl("weights", "rollout", "mlp", str(weights_v2), "--version", "v2", "--endpoints",
               endpoints[0], "--headless", "x:1")
    assert p.returncode == 2 and "give one of" in p.stderr
    p = pt2ctl("weights", "rollout", "mlp", str(weights_v2), "--version", "v2", "--endpoints",
               f"{endpoints[0]},{endpoints[0]}")
    assert p.returncode == 2 and "listed twice" in p.stderr
    # A weight set that does not fit the model: every replica refuses it, nothing changes.
    from safetensors.numpy import save_file
    bad = tmp_path / "bad.safetensors"
    save_file({"nope": np.zeros(3, np.float32)}, str(bad))
    p = pt2ctl(*rollout_args(endpoints, bad, "bad"))
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert report["result"] == "aborted"
    assert all("INVALID_ARGUMENT" in r["error"] for r in report["replicas"]), report
    assert_unchanged(fleet)
    s = status(fleet[0])
    assert s["last_error"].startswith("update: INVALID_ARGUMENT"), s
    # An unreachable replica (nothing listens): aborted before anything is staged.
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    p = pt2ctl(*rollout_args(endpoints[:3] + [f"127.0.0.1:{port}"], weights_v2))
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert report["result"] == "aborted"
    assert all(r["stage"] in ("-", "not started") for r in report["replicas"]), report
    assert_unchanged(fleet)
    # Human-readable output: the per-replica table.
    p = pt2ctl("weights", "rollout", "mlp", str(bad), "--version", "bad", "--endpoints",
               ",".join(endpoints))
    assert p.returncode == 1
    assert p.stdout.splitlines()[0].split()[:3] == ["REPLICA", "BEFORE", "STAGE"]
    assert "ABORTED: no replica changed" in p.stdout
