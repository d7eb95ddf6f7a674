"""Model repository (docs/model-repository.md) against the real daemon and real clients.

* poll mode: a model added, re-versioned and removed while tritonclient clients run: no request
  to a model that is in the repository fails, every response matches eager, responses report
  the version that computed them (traffic moves to a new version once it is READY), and
  ServerReady never turns false.
* explicit mode: RepositoryIndex lists every repository model and version with its state
  (UNAVAILABLE ones with the reason), RepositoryModelLoad by name applies the version policy,
  requests name versions (KServe model_version, pt2serve.v1 RunRequest.model_version).
* confinement: symlinks leaving the root (packages and server-side weights), NUL bytes, "..".
* a rejected admin LoadModel leaves no entry: ServerReady stays true.

Files are published the way the docs recommend: written under a hidden name, then renamed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ADMIN_TOKEN, BUILD_DIR, RPC_TIMEOUT as T, assert_close, wait_for
from test_kserve import infer_inputs

PT2CTL = BUILD_DIR / "tools" / "pt2ctl" / "pt2ctl"
POLL_MS = 200


def publish(model_dir: Path, package: str, dest: Path) -> None:
    """Copies zoo `package` to `dest` (.../model.pt2 or NAME.pt2) atomically: the poller never
    sees half a file, and a new version folder appears complete."""
    folder = dest.parent
    if dest.name == "model.pt2" and not folder.exists():
        staging = folder.parent / f".{folder.name}.staging"
        staging.mkdir(parents=True)
        shutil.copy(model_dir / f"{package}.pt2", staging / "model.pt2")
        os.rename(staging, folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{dest.name}.tmp"
    shutil.copy(model_dir / f"{package}.pt2", tmp)
    os.rename(tmp, dest)


def index(client) -> dict[tuple[str, str], tuple[str, str]]:
    """RepositoryIndex as {(name, version): (state, reason)}."""
    return {(m.name, m.version): (m.state, m.reason)
            for m in client.get_model_repository_index(client_timeout=T).models}


class Clients:
    """Threads sending `model` requests in a loop with tritonclient, checking every output."""

    def __init__(self, url: str, model: str, ref: dict, threads: int = 3):
        self.url, self.model, self.ref = url, model, ref
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        # model_version of each response, per thread (each thread's requests are sequential).
        self.versions: list[list[str]] = [[] for _ in range(threads)]
        self.errors: list[tuple[float, str]] = []  # (monotonic time, message)
        self.threads = [threading.Thread(target=self._run, args=(self.versions[i],), daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, versions: list[str]) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        inputs = infer_inputs(self.ref["inputs"])
        while not self.stop.is_set():
            try:
                result = client.infer(self.model, inputs, client_timeout=T)
                for name, want in self.ref["outputs"].items():
                    assert_close(name, result.as_numpy(name), want)
                with self.lock:
                    self.ok += 1
                    versions.append(result.get_response().model_version)
            except (InferenceServerException, AssertionError) as e:
                with self.lock:
                    self.errors.append((time.monotonic(), str(e)))
        client.close()

    def count(self) -> int:
        with self.lock:
            return self.ok

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def test_poll_mode_add_reversion_remove_under_load(daemon_factory, model_dir, refs, tmp_path, pb):
    repo = tmp_path / "repo"
    publish(model_dir, "mlp", repo / "mlp" / "1" / "model.pt2")
    d = daemon_factory(models=[], admin=True, server={
        "model_repository": str(repo), "repository_mode": "poll",
        "repository_poll_interval_ms": POLL_MS})
    client = grpcclient.InferenceServerClient(d.url)
    assert index(client) == {("mlp", "1"): ("READY", "")}
    assert client.is_server_ready(client_timeout=T)

    mlp = Clients(d.url, "mlp", refs["mlp"])
    wait_for(lambda: mlp.count() > 20, 30, "mlp traffic")
    # Readiness is the pod's: models coming and going must not flip it (Server::Ready).
    not_ready: list[float] = []
    sampling = threading.Event()

    def sample_readiness() -> None:
        probe = grpcclient.InferenceServerClient(d.url)
        while not sampling.is_set():
            if not probe.is_server_ready(client_timeout=T):
                not_ready.append(time.monotonic())
            time.sleep(0.002)
        probe.close()

    sampler = threading.Thread(target=sample_readiness, daemon=True)
    sampler.start()

    # Added while clients run.
    publish(model_dir, "cnn", repo / "cnn" / "model.pt2")
    wait_for(lambda: index(client).get(("cnn", "1"), ("",))[0] == "READY", 60, "cnn READY")
    cnn = Clients(d.url, "cnn", refs["cnn"], threads=2)
    wait_for(lambda: cnn.count() > 10, 30, "cnn traffic")

    # Re-versioned: 2 loads next to 1, traffic moves when 2 is READY, then 1 unloads.
    publish(model_dir, "mlp", repo / "mlp" / "2" / "model.pt2")
    wait_for(lambda: index(client).get(("mlp", "1"), ("",))[0] == "UNAVAILABLE", 60,
             "mlp version 1 retired")
    assert index(client)[("mlp", "2")] == ("READY", "")
    assert "version_policy" in index(client)[("mlp", "1")][1]
    before = mlp.count()
    wait_for(lambda: mlp.count() > before + 20, 30, "mlp traffic on version 2")

    # Removed: its clients stop first (a removed model is NOT_FOUND, by design), then it
    # unloads after draining; mlp's clients never notice.
    cnn.finish()
    assert cnn.errors == [], cnn.errors[:5]
    shutil.rmtree(repo / "cnn")
    wait_for(lambda: ("cnn", "1") not in index(client), 60, "cnn unloaded")
    with pytest.raises(InferenceServerException) as e:
        client.infer("cnn", infer_inputs(refs["cnn"]["inputs"]), client_timeout=T)
    assert "cnn" in str(e.value) and "not loaded" in str(e.value)
    assert client.is_server_ready(client_timeout=T)

    mlp.finish()
    sampling.set()
    sampler.join(timeout=30)
    assert not_ready == [], f"ServerReady was false {len(not_ready)} time(s)"
    assert mlp.errors == [], mlp.errors[:5]
    # Versions only move forward: in each client, every response after its first "2" is from
    # version 2 (a request starts after the previous one ended).
    for versions in mlp.versions:
        assert versions[0] == "1" and versions[-1] == "2", set(versions)
        assert set(versions[versions.index("2"):]) == {"2"}
    log = d.stderr_text()
    assert f"loading model 'mlp' version 2 from {(repo / 'mlp/2/model.pt2').resolve()}" in log
    assert "model 'cnn' left the repository" in log
    # Unloading by request is refused in poll mode: the folder decides.
    ch, admin, md = admin_stub(d, pb)
    with ch, pytest.raises(grpc.RpcError) as e:
        admin.UnloadModel(pb.admin_pb2.UnloadModelRequest(name="mlp"), metadata=md, timeout=T)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
    assert index(client)[("mlp", "2")] == ("READY", "")
    client.close()


@pytest.fixture
def explicit_repo(tmp_path, model_dir) -> Path:
    repo = tmp_path / "repo"
    publish(model_dir, "mlp", repo / "multi" / "1" / "model.pt2")
    publish(model_dir, "mlp", repo / "multi" / "2" / "model.pt2")
    (repo / "multi" / "config.yaml").write_text("num_runners: 2\nversion_policy: all\n")
    publish(model_dir, "cnn", repo / "flat.pt2")
    (repo / "broken").mkdir()
    (repo / "broken" / "config.yaml").write_text("num_runner: 2\n")
    publish(model_dir, "mlp", repo / "broken" / "model.pt2")
    outside = tmp_path / "outside"
    publish(model_dir, "mlp", outside / "model.pt2")
    os.symlink(outside, repo / "escape")
    shutil.copy(model_dir / "mlp.reference.safetensors", outside / "w.safetensors")
    os.symlink(outside / "w.safetensors", repo / "w.safetensors")
    return repo


def test_explicit_mode_index_load_by_name_and_versions(daemon_factory, explicit_repo, refs, pb):
    d = daemon_factory(models=[], admin=True, wait="live", server={
        "model_repository": str(explicit_repo),
        "allow_repository_admin_on_inference_port": True})
    client = grpcclient.InferenceServerClient(d.url)
    idx = index(client)
    assert idx[("multi", "1")] == ("UNAVAILABLE", "not loaded")
    assert idx[("multi", "2")] == ("UNAVAILABLE", "not loaded")
    assert idx[("flat", "1")] == ("UNAVAILABLE", "not loaded")
    assert idx[("broken", "")][0] == "UNAVAILABLE" and "num_runner" in idx[("broken", "")][1]
    assert idx[("escape", "")][0] == "UNAVAILABLE"
    assert "outside the model repository" in idx[("escape", "")][1]
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    with d.channel() as ch:
        ready_only = service_pb2_grpc.GRPCInferenceServiceStub(ch).RepositoryIndex(
            service_pb2.RepositoryIndexRequest(ready=True), timeout=T)
    assert not ready_only.models

    client.load_model("multi", client_timeout=60)  # RepositoryModelLoad by name
    idx = index(client)
    assert idx[("multi", "1")] == ("READY", "") and idx[("multi", "2")] == ("READY", "")
    assert client.is_model_ready("multi", "1", client_timeout=T)
    assert client.is_model_ready("multi", "2", client_timeout=T)
    assert not client.is_model_ready("multi", "3", client_timeout=T)
    md = client.get_model_metadata("multi", client_timeout=T)
    assert list(md.versions) == ["1", "2"]
    assert client.get_model_config("multi", client_timeout=T).config.instance_group[0].count == 2

    ref = refs["mlp"]
    for asked, served in (("", "2"), ("1", "1"), ("2", "2")):
        r = client.infer("multi", infer_inputs(ref["inputs"]), model_version=asked,
                         client_timeout=T)
        assert r.get_response().model_version == served, asked
        for name, want in ref["outputs"].items():
            assert_close(name, r.as_numpy(name), want)
    with pytest.raises(InferenceServerException) as e:
        client.infer("multi", infer_inputs(ref["inputs"]), model_version="3", client_timeout=T)
    assert e.value.status() == "StatusCode.NOT_FOUND" and "version '3'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("multi", infer_inputs(ref["inputs"]), model_version="v1", client_timeout=T)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"

    # The native API names versions too.
    with d.channel() as ch:
        stub = pb.inference_pb2_grpc.InferenceStub(ch)
        x = ref["inputs"]["x"]
        tensor = pb.inference_pb2.Tensor(name="x", dtype=pb.inference_pb2.DT_FLOAT32,
                                         shape=list(x.shape), data=x.tobytes())
        for asked, served in ((0, 2), (1, 1)):
            resp = stub.Run(pb.inference_pb2.RunRequest(model="multi", inputs=[tensor],
                                                        model_version=asked), timeout=T)
            assert resp.model_version == served
        with pytest.raises(grpc.RpcError) as e:
            stub.Run(pb.inference_pb2.RunRequest(model="multi", inputs=[tensor],
                                                 model_version=5), timeout=T)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

    # Loads by name that cannot work: clear errors, no entry, readiness unaffected.
    assert client.is_server_ready(client_timeout=T)
    for name, status in (("broken", "FAILED_PRECONDITION"), ("escape", "FAILED_PRECONDITION"),
                         ("ghost", "NOT_FOUND")):
        with pytest.raises(InferenceServerException) as e:
            client.load_model(name, client_timeout=60)
        assert e.value.status() == f"StatusCode.{status}", (name, e.value.message())
    assert client.is_server_ready(client_timeout=T)
    client.unload_model("multi", client_timeout=60)
    assert index(client)[("multi", "2")] == ("UNAVAILABLE", "not loaded")

    if PT2CTL.is_file():
        # pt2ctl loads by name too (admin LoadModel with no package_path); options would
        # contradict the model's config.yaml, so they need a path.
        base = [str(PT2CTL), "--admin-address", d.admin_url, "--token", ADMIN_TOKEN]
        p = subprocess.run([*base, "models", "load", "multi"], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("loaded multi from the repository: READY"), p.stdout
        assert index(client)[("multi", "1")] == ("READY", "")
        p = subprocess.run([*base, "models", "load", "flat", "--runners", "2"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "INVALID_ARGUMENT" in p.stderr, p.stderr
        assert "config.yaml" in p.stderr
    client.close()


def admin_stub(d, pb):
    ch = grpc.insecure_channel(d.admin_url)
    return ch, pb.admin_pb2_grpc.AdminStub(ch), (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def test_confinement_and_rejected_admin_loads(daemon_factory, explicit_repo, model_dir, pb):
    d = daemon_factory(models=[{"name": "mlp", "path": str(model_dir / "mlp.pt2")}], admin=True,
                       server={"model_repository": str(explicit_repo)})
    client = grpcclient.InferenceServerClient(d.url)
    ch, admin, md = admin_stub(d, pb)
    cases = [
        # (request fields, code, fragment of the message)
        ({"package_path": "flat.pt2\0.txt"}, grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
        ({"package_path": "escape/model.pt2"}, grpc.StatusCode.PERMISSION_DENIED,
         "outside the model repository"),
        ({"package_path": "../outside/model.pt2"}, grpc.StatusCode.INVALID_ARGUMENT,
         "leaves the model repository"),
        ({"package_path": "broken/config.yaml"}, None, "config.yaml"),  # not a package
        ({"package_path": "flat.pt2", "device": "tpu"}, None, "tpu"),
        ({"package_path": "flat.pt2", "num_runners": 100000}, grpc.StatusCode.INVALID_ARGUMENT,
         "num_runners"),
    ]
    with ch:
        for fields, code, fragment in cases:
            with pytest.raises(grpc.RpcError) as e:
                admin.LoadModel(pb.admin_pb2.LoadModelRequest(name="probe", **fields),
                                metadata=md, timeout=60)
            if code is not None:
                assert e.value.code() == code, (fields, e.value.details())
            assert fragment in e.value.details(), (fields, e.value.details())
            # Rejected: nothing listed, the server stays ready (like Triton's explicit loads).
            assert ("probe", "1") not in index(client), fields
            assert client.is_server_ready(client_timeout=T), fields
        # The same name then loads fine.
        admin.LoadModel(pb.admin_pb2.LoadModelRequest(name="probe", package_path="flat.pt2"),
                        metadata=md, timeout=60)
    assert index(client)[("probe", "1")] == ("READY", "")
    log = d.stderr_text()
    assert f"loading model 'probe' from {(explicit_repo / 'flat.pt2').resolve()}" in log

    if PT2CTL.is_file():
        # Server-side weights follow the same rules (pt2ctl, the real client).
        base = [str(PT2CTL), "--admin-address", d.admin_url, "--token", ADMIN_TOKEN]
        p = subprocess.run([*base, "weights", "push", "mlp", "w.safetensors", "--server-side",
                            "--sha256", "0" * 64], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "PERMISSION_DENIED" in p.stderr, p.stderr
        assert "outside the model repository" in p.stderr
    assert d.alive()
    client.close()


def test_all_mode_needs_a_repository_folder(daemon_path, tmp_path):
    from conftest import free_port

    base = [str(daemon_path), "--admin-address", "", "--metrics-address", "",
            "--inference-address", f"127.0.0.1:{free_port()}"]
    p = subprocess.run([*base, "--repository-mode", "all"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0 and "needs server.model_repository" in p.stderr, p.stderr
    p = subprocess.run([*base, "--repository-mode", "poll", "--model-repository",
                        str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "is not a directory" in p.stderr, p.stderr
