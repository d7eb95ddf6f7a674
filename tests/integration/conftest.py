"""Fixtures for the end-to-end tests: the REAL pt2serve daemon as a subprocess.

* `server` (session): one daemon serving the zoo (mlp with 2 runners, cnn, two_io, half), with
  an admin listener protected by a token file and a /metrics listener, on free ports.
  Teardown sends SIGTERM and asserts exit code 0.
* `daemon_factory` (function): starts extra daemons with custom configs (small message limits,
  tiny queues, json logs, ...); every daemon it started is killed at teardown, even on failure.
* `pb` (session): Python stubs of OUR pt2serve/v1 protos (inference + admin), compiled with
  grpc_tools.protoc into a tmp dir on sys.path. Our kserve protos are deliberately NOT compiled:
  their `inference.*` names would clash with tritonclient's in the descriptor pool; raw KServe
  calls use tritonclient.grpc.service_pb2 / service_pb2_grpc (wire-identical).
* `refs` (session): the zoo's reference inputs/outputs (NAME.reference.safetensors).

Environment: PT2SERVE_MODEL_DIR (zoo dir; exported by tools/export/export_model.py zoo when
unset), PT2SERVE_BUILD_DIR (default /work/main/build; daemon at server/pt2serve).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("PT2SERVE_BUILD_DIR") or "/work/main/build")
DAEMON = BUILD_DIR / "server" / "pt2serve"
ZOO = ("mlp", "cnn", "two_io", "half")
MAIN_RUNNERS = {"mlp": 2, "cnn": 1, "two_io": 1, "half": 1}
ADMIN_TOKEN = "integration-secret-token-1234"

RPC_TIMEOUT = 10.0       # seconds, for every ordinary RPC
START_TIMEOUT = 30.0     # seconds until ServerReady / ServerLive
STOP_TIMEOUT = 30.0      # seconds for a SIGTERM'd daemon to exit


# --------------------------------------------------------------------------------- helpers


_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port that was free a moment ago (bind to 0, read it, close) and that this test process
    has not handed out before: the kernel may return a just-closed ephemeral port again, which
    gave one daemon the same port for two listeners (a config error, not a retryable race)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port
    raise AssertionError("no unused loopback port in 1000 tries")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    env = os.environ.get("PT2SERVE_MODEL_DIR")
    if env:
        path = Path(env)
    else:
        proc = subprocess.run([sys.executable, str(REPO / "tools/export/export_model.py"), "zoo"],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"zoo export failed:\n{proc.stderr[-4000:]}"
        path = Path(proc.stdout.strip().splitlines()[-1])
    for name in ZOO:
        assert (path / f"{name}.pt2").is_file(), f"missing zoo package {path / name}.pt2"
    return path


@pytest.fixture(scope="session")
def daemon_path() -> Path:
    assert DAEMON.is_file() and os.access(DAEMON, os.X_OK), (
        f"pt2serve daemon not built at {DAEMON} (set PT2SERVE_BUILD_DIR or run "
        f"`ninja -C {BUILD_DIR} pt2serve`)")
    return DAEMON


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Generated Python modules for pt2serve/v1 inference.proto and admin.proto."""
    import grpc_tools

    out = tmp_path_factory.mktemp("pt2serve_stubs")
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}", f"-I{wkt}",
           f"--python_out={out}", f"--grpc_python_out={out}",
           "pt2serve/v1/inference.proto", "pt2serve/v1/admin.proto"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"protoc failed:\n{proc.stderr}"
    sys.path.insert(0, str(out))
    mods = {n: importlib.import_module(f"pt2serve.v1.{n}")
            for n in ("inference_pb2", "inference_pb2_grpc", "admin_pb2", "admin_pb2_grpc")}

    class Stubs:
        inference_pb2 = mods["inference_pb2"]
        inference_pb2_grpc = mods["inference_pb2_grpc"]
        admin_pb2 = mods["admin_pb2"]
        admin_pb2_grpc = mods["admin_pb2_grpc"]

    return Stubs


@pytest.fixture(scope="session")
def refs(model_dir) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{model: {"inputs": {name: array}, "outputs": {name: array}}} from the reference files."""
    from safetensors.numpy import load_file

    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name in ZOO:
        tensors = load_file(str(model_dir / f"{name}.reference.safetensors"))
        entry = {"inputs": {}, "outputs": {}}
        for key, arr in tensors.items():
            kind, _, tname = key.partition(".")
            entry[{"input": "inputs", "output": "outputs"}[kind]][tname] = arr
        assert entry["inputs"] and entry["outputs"], f"{name}: empty reference"
        out[name] = entry
    return out


@pytest.fixture(scope="session")
def signatures(model_dir) -> dict[str, dict]:
    return {n: json.loads((model_dir / f"{n}.signature.json").read_text()) for n in ZOO}


# ---------------------------------------------------------------------------------- daemon


@dataclass
class Daemon:
    """A running pt2serve process and where it listens."""

    proc: subprocess.Popen
    workdir: Path
    config_path: Path
    stderr_path: Path
    inference_port: int
    metrics_port: int | None
    admin_port: int | None
    token: str | None
    config: dict
    _exit_code: int | None = field(default=None)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.inference_port}"

    @property
    def admin_url(self) -> str:
        assert self.admin_port, "this daemon has no admin listener"
        return f"127.0.0.1:{self.admin_port}"

    @property
    def metrics_url(self) -> str:
        assert self.metrics_port, "this daemon has no metrics listener"
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, n: int = 6000) -> str:
        return self.stderr_text()[-n:]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.url, options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20)])

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to `timeout`; SIGKILL and raise if it did not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"pt2serve (pid {self.pid}) did not exit within {timeout}s of SIGTERM; "
                    f"stderr tail:\n{self.stderr_tail()}")
        self._exit_code = self.proc.returncode
        return self._exit_code

    def stop_clean(self) -> None:
        """Fixture teardown: the daemon must still be running, and exit 0 on SIGTERM."""
        alive = self.alive()
        code = self.stop() if alive else self.proc.returncode
        assert alive, f"the daemon died (exit {code}); stderr:\n{self.stderr_tail()}"
        assert code == 0, f"exit {code} after SIGTERM; stderr:\n{self.stderr_tail()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def _kserve_probe(url: str, ready: bool) -> bool | None:
    """ServerReady (or ServerLive) over a raw channel; None if the call failed."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        try:
            if ready:
                return stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1.0).ready
            return stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=1.0).live
        except grpc.RpcError:
            return None


PORT_RACE_MARKERS = ("cannot listen", "cannot serve /metrics", "Address already in use")


def start_daemon(workdir: Path, *, models: list[dict], server: dict | None = None,
                 logging: dict | None = None, extra_args: tuple[str, ...] = (),
                 admin: bool = False, metrics: bool = True, wait: str = "ready",
                 env: dict | None = None) -> Daemon:
    """Writes a YAML config into `workdir` and starts the daemon on free ports.

    wait: "ready" (ServerReady true), "live" (ServerLive true) or "none".
    The config is written as JSON, which is valid YAML (flow style). If another process took
    one of the picked ports in between (the daemon exits saying it cannot listen), it retries
    on fresh ports, at most 3 times.
    """
    for attempt in range(3):
        try:
            return _start_daemon_once(workdir, models=models, server=server, logging=logging,
                                      extra_args=extra_args, admin=admin, metrics=metrics,
                                      wait=wait, env=env)
        except _PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class _PortTaken(AssertionError):
    pass


def _start_daemon_once(workdir: Path, *, models, server, logging, extra_args, admin, metrics,
                       wait, env) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    inference_port = free_port()
    metrics_port = free_port() if metrics else None
    admin_port = free_port() if admin else None
    srv: dict[str, Any] = {
        "inference_address": f"127.0.0.1:{inference_port}",
        "metrics_address": f"127.0.0.1:{metrics_port}" if metrics else "",
        "admin_address": f"127.0.0.1:{admin_port}" if admin else "",
        "model_repository": "",
    }
    token = None
    if admin:
        token = ADMIN_TOKEN
        token_file = workdir / "admin.token"
        token_file.write_text(f"  {token}\n")  # surrounding whitespace is trimmed
        token_file.chmod(0o600)
        srv["admin_auth"] = {"token_file": str(token_file)}
    srv.update(server or {})
    config: dict[str, Any] = {"server": srv, "models": models}
    if logging:
        config["logging"] = logging
    config_path = workdir / "pt2serve.yaml"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    stderr_path = workdir / "stderr.log"
    with open(stderr_path, "wb") as err, open(workdir / "stdout.log", "wb") as out:
        proc = subprocess.Popen([str(DAEMON), "--config", str(config_path), *extra_args],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=workdir,
                                env={**os.environ, **(env or {})})
    d = Daemon(proc, workdir, config_path, stderr_path, inference_port, metrics_port, admin_port,
               token, config)
    if wait == "none":
        return d
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            if any(m in d.stderr_text() for m in PORT_RACE_MARKERS):
                raise _PortTaken(d.stderr_tail())
            raise AssertionError(f"pt2serve exited with {proc.returncode} during start-up; "
                                 f"config:\n{config_path.read_text()}\nstderr:\n{d.stderr_tail()}")
        if _kserve_probe(d.url, ready=(wait == "ready")):
            return d
        if time.monotonic() > deadline:
            d.kill()
            raise AssertionError(f"pt2serve not {wait} within {START_TIMEOUT}s; stderr:\n"
                                 f"{d.stderr_tail()}")
        time.sleep(0.05)


def zoo_models(model_dir: Path, **overrides: dict) -> list[dict]:
    """Model entries for the zoo; overrides: {name: {key: value}}."""
    entries = []
    for name in ZOO:
        e = {"name": name, "path": str(model_dir / f"{name}.pt2"),
             "num_runners": MAIN_RUNNERS[name]}
        e.update(overrides.get(name, {}))
        entries.append(e)
    return entries


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_dir, daemon_path):
    """The shared daemon: zoo models, admin (token file), metrics."""
    d = start_daemon(tmp_path_factory.mktemp("main_daemon"), models=zoo_models(model_dir),
                     admin=True, metrics=True)
    try:
        yield d
    finally:
        if d.alive():
            code = d.stop()
            assert code == 0, (f"pt2serve exited with {code} after SIGTERM; stderr tail:\n"
                               f"{d.stderr_tail()}")
        else:
            d.kill()
            raise AssertionError(f"the shared pt2serve died during the tests (exit "
                                 f"{d.proc.returncode}); stderr:\n{d.stderr_tail()}")


@pytest.fixture
def daemon_factory(tmp_path, daemon_path) -> Callable[..., Daemon]:
    """start(models=[...], server={...}, ...) -> Daemon; all are killed at teardown."""
    started: list[Daemon] = []

    def start(**kwargs) -> Daemon:
        d = start_daemon(tmp_path / f"daemon{len(started)}", **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


# ------------------------------------------------------------------------------ KServe raw


@pytest.fixture
def kserve_raw(server):
    """(service_pb2, stub) on the shared daemon: tritonclient's wire-identical KServe modules."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    ch = server.channel()
    try:
        yield service_pb2, service_pb2_grpc.GRPCInferenceServiceStub(ch)
    finally:
        ch.close()


def np_to_kserve_dtype(arr: np.ndarray) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16",
            np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64",
            np.dtype(np.int32): "INT32", np.dtype(np.uint8): "UINT8",
            np.dtype(np.bool_): "BOOL"}[arr.dtype]


def assert_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != reference {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != reference {want.dtype}"
    if want.dtype == np.float16:
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                                   rtol=1e-2, atol=1e-2, err_msg=name)
    elif np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


# --------------------------------------------------------------------------------- metrics


def scrape(daemon: Daemon, timeout: float = RPC_TIMEOUT) -> str:
    """GET /metrics (text exposition format)."""
    import urllib.request

    with urllib.request.urlopen(daemon.metrics_url, timeout=timeout) as r:
        assert r.status == 200
        return r.read().decode()


def parse_metrics(text: str) -> dict:
    """{family name: Metric} via prometheus_client's parser (raises on malformed text)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_value(families: dict, sample: str, **labels: str) -> float:
    """Sum of the samples called `sample` whose labels include `labels` (0 if none)."""
    total = 0.0
    for fam in families.values():
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def metric(daemon: Daemon, sample: str, **labels: str) -> float:
    return sample_value(parse_metrics(scrape(daemon)), sample, **labels)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval=0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kserve_request(service_pb2, model: str, inputs: dict[str, np.ndarray], **fields):
    """A ModelInferRequest with raw_input_contents (what tritonclient sends)."""
    req = service_pb2.ModelInferRequest(model_name=model, **fields)
    for name, arr in inputs.items():
        arr = np.ascontiguousarray(arr)
        req.inputs.add(name=name, datatype=np_to_kserve_dtype(arr), shape=list(arr.shape))
        req.raw_input_contents.append(arr.tobytes())
    return req
