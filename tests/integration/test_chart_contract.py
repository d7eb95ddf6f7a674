"""The Helm chart's commands run against the REAL binaries: what the chart renders must be what
pt2serve and pt2ctl accept.

Renders deploy/helm/pt2serve (helm-python-sdk), then on 127.0.0.1:
* starts pt2serve with the Deployment's args (Kubernetes' $(VAR) expansion done from the weights
  ConfigMap) and the config ConfigMap, only listen addresses and the token path rewritten: it
  must start, report SERVING, and serve the weights version the ConfigMap records;
* runs the rollout Job's pt2ctl args (its --headless name pointed at the daemon) for a new
  weights.version: it must commit it;
* runs the `helm test` pod's pt2ctl args: it must pass.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

from pathlib import Path

import helm_python as helm
import numpy as np
import yaml

from conftest import BUILD_DIR, DAEMON, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
PT2CTL = BUILD_DIR / "tools" / "pt2ctl" / "pt2ctl"


def render(values: dict) -> list[dict]:
    out = helm.Chart.load(str(REPO / "deploy/helm/pt2serve")).render(
        values, name="demo", namespace="ns", is_upgrade=True)
    return [d for path, text in out.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def find(docs, kind, suffix=""):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of container args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], arg)


def make_weights(model_dir: Path, path: Path, seed: int) -> str:
    from safetensors.numpy import load_file, save_file

    base = load_file(str(model_dir / "mlp.weights.safetensors"))
    rng = np.random.default_rng(seed)
    save_file({k: (v + rng.normal(0, 0.2, v.shape)).astype(v.dtype) for k, v in base.items()},
              str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_chart_commands_run_on_the_real_binaries(tmp_path, model_dir, daemon_path):
    assert PT2CTL.is_file(), f"pt2ctl not built at {PT2CTL}"
    repo = tmp_path / "models"
    (repo / "weights").mkdir(parents=True)
    shutil.copyfile(model_dir / "mlp.pt2", repo / "mlp.pt2")
    sha_v2 = make_weights(model_dir, repo / "weights/v2.safetensors", 2)
    sha_v3 = make_weights(model_dir, repo / "weights/v3.safetensors", 3)
    values = {"modelStorage": {"type": "pvc", "mountPath": str(repo),
                               "pvc": {"existingClaim": "models"}},
              "models": [{"name": "mlp", "path": "mlp.pt2", "numRunners": 2}],
              "server": {"drainDelayMs": 200, "drainTimeoutMs": 2000},
              "weights": {"model": "mlp", "version": "v2", "file": "weights/v2.safetensors",
                          "sha256": sha_v2}}
    docs = render(values)

    # --- the server pod
    token = tmp_path / "token"
    token.write_text(find(docs, "Secret")["data"]["token"])  # any printable token works
    config = yaml.safe_load(find(docs, "ConfigMap", "-config")["data"]["config.yaml"])
    ports = {k: free_port() for k in ("inference", "metrics", "admin")}
    for key in ports:
        config["server"][f"{key}_address"] = f"127.0.0.1:{ports[key]}"
    assert config["server"]["admin_auth"]["token_file"].startswith("/var/run/secrets/")
    config["server"]["admin_auth"]["token_file"] = str(token)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    weights_cm = find(docs, "ConfigMap", "-weights")["data"]
    env = {e["name"]: weights_cm[e["valueFrom"]["configMapKeyRef"]["key"]]
           for e in container["env"] if "configMapKeyRef" in e.get("valueFrom", {})}
    args = [expand(a, env) for a in container["args"]]
    assert args[0] == "--config=/etc/pt2serve/config.yaml"
    args[0] = f"--config={config_path}"
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([str(DAEMON), *args], stdout=log, stderr=log)
    try:
        def serving():
            p = subprocess.run([str(PT2CTL), f"--address=127.0.0.1:{ports['inference']}",
                                "--timeout=2", "check", "--model=mlp", "--json"],
                               capture_output=True, text=True)
            return p.returncode == 0 and json.loads(p.stdout)["weights_version"] == "v2"

        wait_for(lambda: proc.poll() is not None or serving(), 30, "the chart's pod to serve v2",
                 interval=0.1)
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]

        # --- the rollout Job for the next version
        job_docs = render({**values, "weights": {**values["weights"], "version": "v3",
                                                 "file": "weights/v3.safetensors",
                                                 "sha256": sha_v3}})
        job = find(job_docs, "Job", "-rollout")["spec"]["template"]["spec"]["containers"][0]
        assert job["command"] == ["/usr/bin/pt2ctl"]
        job_args = []
        for a in job["args"]:
            if a.startswith("--headless="):
                a = f"--headless=127.0.0.1:{ports['admin']}"
            elif a.startswith("--token-file="):
                a = f"--token-file={token}"
            job_args.append(a)
        p = subprocess.run([str(PT2CTL), *job_args, "--json"], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        report = json.loads(p.stdout)
        assert report["result"] == "committed" and report["sha256"] == sha_v3
        assert [r["active"] for r in report["replicas"]] == ["v3"]

        # --- helm test
        test = find(docs, "Pod", "-test")["spec"]["containers"][0]
        test_args = [f"--address=127.0.0.1:{ports['inference']}" if a.startswith("--address=")
                     else a for a in test["args"]]
        p = subprocess.run([str(PT2CTL), *test_args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "weights 'v3'" in p.stdout
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        log.close()
