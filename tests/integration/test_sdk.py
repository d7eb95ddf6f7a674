"""The Python SDK (sdk/python, pt2serve-client) against the REAL daemon.

The package is built as a wheel and installed into a temporary directory first (so the test
also proves that it installs with pip and carries its generated stubs). Then: push of a
state_dict (numpy and torch) with swap, status, rollback, free-inactive, a safetensors path,
the key mapping (wrapper prefixes, key_map, unmatched keys reported by the server), wrong
shapes, and a push broken off mid-stream leaving the active weights intact.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ADMIN_TOKEN, REPO, start_daemon
# daemon, repo, references: fixtures (mlp with 2 runners, a repository with the seed-7 set).
from test_pt2ctl import (SEED, assert_serves, daemon, references, repo,  # noqa: F401
                         seed_weights)


@pytest.fixture(scope="module")
def sdk(tmp_path_factory):
    """pt2serve_client installed from a wheel built from sdk/python (stubs generated then)."""
    work = tmp_path_factory.mktemp("sdk")
    pip = [sys.executable, "-m", "pip"]
    build = pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO / "sdk" / "python"),
                   "-w", str(work / "wheel")]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"building the wheel failed:\n{proc.stderr[-3000:]}"
    wheels = [str(w) for w in (work / "wheel").glob("pt2serve_client-*.whl")]
    assert len(wheels) == 1, wheels
    install = pip + ["install", "-q", "--no-deps", "--target", str(work / "site"), *wheels]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"installing the wheel failed:\n{proc.stderr[-3000:]}"
    sys.path.insert(0, str(work / "site"))
    return importlib.import_module("pt2serve_client")


@pytest.fixture
def client(sdk, daemon):
    with sdk.Client(daemon.admin_url, token=ADMIN_TOKEN) as c:
        yield c


def test_push_swap_rollback_free_status(sdk, client, pb, daemon, repo, references):
    w = seed_weights(repo)
    seen = []
    result = client.push("mlp", w, version=f"seed{SEED}", swap=True,
                         progress=lambda done, total: seen.append((done, total)))
    total = sum(v.nbytes for v in w.values())
    assert (result.version, result.bytes_sent, result.tensors, result.swapped) == \
        (f"seed{SEED}", total, len(w), True)
    assert seen and seen[-1] == (total, total)
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:]))
    assert_serves(pb, daemon, references, f"seed{SEED}")
    st = client.status("mlp")
    assert st.active.version == f"seed{SEED}" and st.active.sha256 == result.sha256
    assert st.inactive.version == "initial"
    client.rollback("mlp")
    assert_serves(pb, daemon, references, "initial")
    assert client.free_inactive("mlp") > 0
    with pytest.raises(sdk.PushError) as e:
        client.rollback("mlp")
    assert e.value.code.name == "FAILED_PRECONDITION"


def test_push_torch_state_dict_with_wrapper_prefixes_and_a_file(sdk, client, pb, daemon, repo,
                                                                 references):
    torch = pytest.importorskip("torch")
    w = seed_weights(repo)
    # What DDP + torch.compile produce: "module._orig_mod.fc1.weight".
    state_dict = {f"module._orig_mod.{k}": torch.from_numpy(v.copy()) for k, v in w.items()}
    client.push("mlp", state_dict, version="torch", swap=True)
    assert client.status("mlp").active.version == "torch"
    client.push("mlp", repo / f"seed{SEED}.safetensors", version=f"seed{SEED}", swap=True)
    assert_serves(pb, daemon, references, f"seed{SEED}")


def test_unmatched_keys_and_wrong_shapes_are_reported(sdk, client, pb, daemon, repo, references):
    w = seed_weights(repo)
    bad = dict(w)
    bad["fc9.weight"] = bad.pop("fc2.weight")
    with pytest.raises(sdk.PushError) as e:
        client.push("mlp", bad, version="bad-keys")
    assert e.value.code.name == "INVALID_ARGUMENT"
    assert "missing 'fc2.weight'" in e.value.details and "unknown 'fc9.weight'" in e.value.details
    # key_map renames one key and drops another (None).
    fixed = client.push("mlp", dict(bad, extra=np.zeros(3, np.float32)), version="mapped",
                        key_map={"fc9.weight": "fc2.weight", "extra": None})
    assert fixed.tensors == len(w)
    wrong = dict(w, **{"fc1.weight": w["fc1.weight"][:, :15]})
    with pytest.raises(sdk.PushError) as e:
        client.push("mlp", wrong, version="bad-shape")
    assert e.value.code.name == "INVALID_ARGUMENT" and "'fc1.weight' has shape" in e.value.details
    with pytest.raises(ValueError):
        sdk.map_keys({"module.a": 1, "a": 2})
    assert_serves(pb, daemon, references, "initial")


def test_push_broken_off_mid_stream_keeps_the_active_weights(sdk, client, pb, daemon, repo,
                                                             references):
    class Interrupted(Exception):
        pass

    def stop_halfway(done, total):
        if done * 2 >= total:
            raise Interrupted()

    with pytest.raises(Interrupted):
        client.push("mlp", seed_weights(repo), version="half", chunk_bytes=512,
                    progress=stop_halfway)
    assert_serves(pb, daemon, references, "initial")
    assert client.status("mlp").inactive.state == pb.admin_pb2.EMPTY
    # The writer slot is free again once the server has seen the cancellation (async).
    deadline = time.monotonic() + 5
    while True:
        try:
            client.push("mlp", seed_weights(repo), version=f"seed{SEED}", swap=True)
            break
        except sdk.PushError as e:
            if e.code.name != "FAILED_PRECONDITION" or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert_serves(pb, daemon, references, f"seed{SEED}")


def test_training_loop_example(sdk, daemon):
    """sdk/python/examples/train_and_push.py: 3 pushes while requests run; every response
    matches the version it names, and every pushed version is seen."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, str(REPO / "sdk" / "python" / "examples" / "train_and_push.py"),
         "--admin-address", daemon.admin_url, "--address", daemon.url,
         "--token-file", str(daemon.workdir / "admin.token"), "--steps", "30",
         "--push-every", "10"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert "0 mismatched" in proc.stdout and "step-30" in proc.stdout, proc.stdout


def test_rollout_across_two_daemons(sdk, daemon, tmp_path, repo, pb, references):
    """Two replicas: stage on both, then commit both; a re-run is a no-op; a set the
    package refuses aborts in the stage phase with nothing changed and nothing left staged."""
    second = start_daemon(tmp_path / "second",
                          models=[{"name": "mlp", "path": str(repo / "mlp.pt2"),
                                   "num_runners": 2}],
                          server={"model_repository": str(repo)}, admin=True, metrics=False)
    try:
        endpoints = [daemon.admin_url, second.admin_url]
        reports = sdk.rollout(endpoints, "mlp", seed_weights(repo), f"seed{SEED}",
                              token=ADMIN_TOKEN)
        assert [r.outcome for r in reports] == ["committed", "committed"]
        for d in (daemon, second):
            assert_serves(pb, d, references, f"seed{SEED}")
        again = sdk.rollout(endpoints, "mlp", seed_weights(repo), f"seed{SEED}",
                            token=ADMIN_TOKEN)
        assert [r.outcome for r in again] == ["already active", "already active"]

        bad = dict(seed_weights(repo))
        bad.pop("fc2.bias")
        with pytest.raises(sdk.RolloutError) as e:
            sdk.rollout(endpoints, "mlp", bad, "bad", token=ADMIN_TOKEN)
        assert "stage phase" in str(e.value) and "missing 'fc2.bias'" in str(e.value)
        for d in (daemon, second):
            assert_serves(pb, d, references, f"seed{SEED}")
            with sdk.Client(d.admin_url, token=ADMIN_TOKEN) as c:
                assert c.status("mlp").inactive.version != "bad"
    finally:
        second.kill()
