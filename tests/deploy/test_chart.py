"""Offline tests of the Helm chart in deploy/helm/pt2serve.

* helm lint --strict (helm v4 through helm-python-sdk) for the oldest and newest Kubernetes
  versions the chart supports;
* render with every values file in tests/deploy/values/ (defaults, GPU, PVC, hostPath, emptyDir,
  autoscaling, KEDA, TLS) and run on each rendered object:
  - kubernetes-validate --strict against the oldest and newest supported versions,
  - the checks a real API server or controller would make that the schemas cannot
    (selectors match pod labels, DNS-1123 names, port names <= 15 chars, probes on declared
    ports, grace period >= preStop + drain delay + drain timeout + margin, admin port absent
    from the inference Service, ...);
* bad values the schema must reject, with an error that names the value;
* checkov (policy lint) with zero failed checks (skips are justified in .checkov.yaml).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "pt2serve"
VALUES_DIR = Path(__file__).resolve().parent / "values"
VALUES_FILES = sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))
OLDEST, NEWEST = "1.27.0", "1.37.0"  # Chart.yaml kubeVersion >=1.27; newest schemas we have
RELEASE, NAMESPACE = "demo", "inference"
# Kinds from CRDs (no schema in kubernetes-validate); checked by our own rules below.
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}
CHECKOV = Path(os.environ.get("PT2SERVE_CHECKOV",
                              Path.home() / ".cache/pt2serve/checkov-venv/bin/checkov"))

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def chart():
    return helm.Chart.load(str(CHART))


def load_values(name: str) -> dict:
    return yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text()) or {}


def render(chart, values: dict) -> list[dict]:
    """Every object the chart renders (NOTES.txt excluded), in template order."""
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def rendered(chart) -> dict[str, list[dict]]:
    return {name: render(chart, load_values(name)) for name in VALUES_FILES}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(object name, pod metadata, pod spec) for every object that carries a pod."""
    out = []
    for d in docs:
        k, spec = d["kind"], d.get("spec", {})
        if k == "Pod":
            out.append((d["metadata"]["name"], d["metadata"], spec))
        elif k in ("Deployment", "Job"):
            out.append((d["metadata"]["name"], spec["template"]["metadata"], spec["template"]["spec"]))
        elif k == "CronJob":
            t = spec["jobTemplate"]["spec"]["template"]
            out.append((d["metadata"]["name"], t["metadata"], t["spec"]))
    return out


# ------------------------------------------------------------------------------ lint


@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
@pytest.mark.parametrize("values", ["defaults", "tls", "gpu"])
def test_lint_strict(values, kube):
    report = helm.lint(str(CHART), load_values(values), strict=True, kube_version=f"v{kube}",
                       namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, json.dumps(report, indent=1)


def test_schema_file_is_generated():
    proc = subprocess.run([sys.executable, str(REPO / "deploy/helm/tools/make_schema.py"), "--check"])
    assert proc.returncode == 0, "values.schema.json is stale: run deploy/helm/tools/make_schema.py"


def test_every_value_is_documented():
    """Every leaf key of values.yaml has a comment right above it, or sits inside a documented
    block (a Kubernetes object passed through as a whole, such as resources or behavior)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing blocks
    undocumented = []
    prev = ""
    for line in lines:
        m = re.match(r"^(\s*)(- )?([A-Za-z][A-Za-z0-9]*):\s*(.*)$", line)
        if not m:
            if line.strip():
                prev = line.strip()
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = prev.startswith("#") or any(d for _, d in stack)
        if m.group(4) == "":
            stack.append((indent, prev.startswith("#")))
        elif not documented:
            undocumented.append(line.strip())
        prev = line.strip()
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


# ------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("values", VALUES_FILES)
def test_renders(rendered, values):
    kinds = {d["kind"] for d in rendered[values]}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget",
            "NetworkPolicy", "Pod"} <= kinds


@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
@pytest.mark.parametrize("values", VALUES_FILES)
def test_kubernetes_validate_strict(chart, rendered, values, kube):
    docs = rendered[values]
    if kube == OLDEST:
        # The preStop sleep action exists from 1.30 on; the chart renders it only there
        # (Capabilities), which helm lint --kube-version 1.27 covers. Validate the rest at 1.27.
        v = copy.deepcopy(load_values(values))
        v.setdefault("server", {})["preStopSleepSeconds"] = 0
        docs = render(chart, v)
    failures = []
    for d in docs:
        if d["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(d, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    assert not failures, "\n".join(failures)


# -------------------------------------------------------------------- semantic checks


def walk_names(docs):
    for d in docs:
        yield d["kind"], d["metadata"]["name"]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_names_are_dns1123(rendered, values):
    for kind, name in walk_names(rendered[values]):
        rule = DNS1123_LABEL if kind in ("Service",) else DNS1123_SUBDOMAIN
        limit = 63 if kind in ("Service", "CronJob") else 253
        if kind == "CronJob":
            limit = 52  # its Jobs get an 11-character suffix
        assert rule.match(name) and len(name) <= limit, f"{kind} name {name!r} invalid"
        for label, value in (d := next(x for x in rendered[values]
                                        if x["metadata"]["name"] == name and x["kind"] == kind)
                             )["metadata"].get("labels", {}).items():
            assert len(str(value)) <= 63 and re.match(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
                                                      str(value)), f"{kind}/{name} label {label}={value}"
    for _, _, spec in pod_specs(rendered[values]):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            assert DNS1123_LABEL.match(c["name"]), c["name"]
        for v in spec.get("volumes", []):
            assert DNS1123_LABEL.match(v["name"]) and len(v["name"]) <= 63, v["name"]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_port_names_and_probes(rendered, values):
    for obj_name, _, spec in pod_specs(rendered[values]):
        for c in spec["containers"]:
            ports = {p["containerPort"]: p.get("name") for p in c.get("ports", [])}
            for name in ports.values():
                if name:
                    assert len(name) <= 15 and IANA_SVC_NAME.match(name), f"port name {name!r}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in c:
                    continue
                action = c[probe].get("grpc") or c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert action, f"{obj_name}: {probe} has no action"
                port = action["port"]
                assert port in ports or port in ports.values(), (
                    f"{obj_name}: {probe} on port {port}, container declares {ports}")
            names = [v["name"] for v in spec.get("volumes", [])]
            assert len(names) == len(set(names)), f"duplicate volumes {names}"
            for m in c.get("volumeMounts", []):
                assert m["name"] in names, f"{obj_name}: mount of undeclared volume {m['name']}"
    for svc in by_kind(rendered[values], "Service"):
        for p in svc["spec"]["ports"]:
            assert len(p["name"]) <= 15 and IANA_SVC_NAME.match(p["name"]), p["name"]


def selector_matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("values", VALUES_FILES)
def test_selectors_match_pods(rendered, values):
    docs = rendered[values]
    dep = one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(dep["spec"]["selector"]["matchLabels"], pod_labels)
    pod_ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
    for svc in by_kind(docs, "Service"):
        assert selector_matches(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in pod_ports, f"{svc['metadata']['name']}: {p['targetPort']}"
    for o in by_kind(docs, "PodDisruptionBudget"):
        assert selector_matches(o["spec"]["selector"]["matchLabels"], pod_labels)
    server_policy = one(docs, "NetworkPolicy", dep["metadata"]["name"])
    assert selector_matches(server_policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    # The clients' policy (no ingress) covers the Job and test pods, never the servers.
    clients = one(docs, "NetworkPolicy", "-clients")["spec"]
    assert "ingress" not in clients and clients["policyTypes"] == ["Ingress"]
    allowed = clients["podSelector"]["matchExpressions"][0]["values"]
    assert pod_labels["app.kubernetes.io/component"] not in allowed
    for _, meta, _ in pod_specs(docs):
        if meta["labels"].get("app.kubernetes.io/component") != "server":
            assert meta["labels"]["app.kubernetes.io/component"] in allowed
    for sm in by_kind(docs, "ServiceMonitor"):
        matched = [s for s in by_kind(docs, "Service")
                   if selector_matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert matched and all(any(p["name"] == e["port"] for p in s["spec"]["ports"])
                               for s in matched for e in sm["spec"]["endpoints"])
    for t in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert selector_matches(t["labelSelector"]["matchLabels"], pod_labels)
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for o in by_kind(docs, kind):
            assert o["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
            assert "replicas" not in dep["spec"], "replicas set while autoscaling"
    # The NetworkPolicy's admin rule admits exactly the rollout Job's pods.
    for np_ in [server_policy]:
        admin_rules = [r for r in np_["spec"]["ingress"]
                       if any(p["port"] == "grpc-admin" for p in r["ports"])]
        assert len(admin_rules) == 1 and admin_rules[0]["from"], "admin port open to all"
        peer = admin_rules[0]["from"][0]["podSelector"]["matchLabels"]
        rollout_pods = [m for n, m, _ in pod_specs(docs) if n.endswith("-rollout")]
        for m in rollout_pods:
            assert selector_matches(peer, m["labels"])
        assert not selector_matches(peer, pod_labels)


@pytest.mark.parametrize("values", VALUES_FILES)
def test_admin_port_not_in_inference_service(rendered, values):
    docs = rendered[values]
    admin_port = next(p["containerPort"] for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
                      for p in c["ports"] if p["name"] == "grpc-admin")
    for svc in by_kind(docs, "Service"):
        ports = {p["port"] for p in svc["spec"]["ports"]} | {p["targetPort"] for p in svc["spec"]["ports"]}
        if svc["metadata"]["name"].endswith("-admin"):
            assert svc["spec"]["clusterIP"] == "None" and ports == {admin_port, "grpc-admin"}
        else:
            assert admin_port not in ports and "grpc-admin" not in ports, svc["metadata"]["name"]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_grace_period_covers_drain(rendered, values):
    docs = rendered[values]
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    config = yaml.safe_load(one(docs, "ConfigMap", "-config")["data"]["config.yaml"])["server"]
    c = spec["containers"][0]
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    budget = pre_stop + (config["drain_delay_ms"] + config["drain_timeout_ms"]) / 1000
    margin = load_values(values).get("server", {}).get("terminationMarginSeconds", 15)
    assert spec["terminationGracePeriodSeconds"] >= math.ceil(budget) + margin
    assert config["drain_delay_ms"] > 0, "no drain delay: clients see connection resets"


@pytest.mark.parametrize("values", VALUES_FILES)
def test_pods_hardened(rendered, values):
    for name, _, spec in pod_specs(rendered[values]):
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("enableServiceLinks") is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], name
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert c["resources"].get("limits", {}).get("memory"), f"{name}/{c['name']} no memory limit"


def test_config_and_values_reach_the_pod(rendered):
    docs = rendered["gpu"]
    c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/mig-3g.71gb"] == 2
    assert c["resources"]["requests"]["nvidia.com/mig-3g.71gb"] == 2
    config = yaml.safe_load(one(docs, "ConfigMap", "-config")["data"]["config.yaml"])
    assert config["models"][0] == {"name": "mlp", "path": "/usr/share/pt2serve/models/mlp.pt2",
                                   "device": "cuda:0,cuda:1", "num_runners": 4,
                                   "max_queue_size": 128, "timeout_ms": 2000, "cpu_threads": 2,
                                   "isolation": "process"}
    tls = rendered["tls"]
    config = yaml.safe_load(one(tls, "ConfigMap", "-config")["data"]["config.yaml"])["server"]
    assert config["tls"]["admin"]["client_ca_file"].endswith("/ca.crt")
    assert config["admin_auth"] == {"token_file": "/var/run/secrets/pt2serve/admin/admin-token"}
    volumes = {v["name"]: v for v in one(tls, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["admin-token"]["secret"]["secretName"] == "pt2serve-admin-token"
    assert volumes["admin-token"]["secret"]["items"] == [{"key": "admin-token", "path": "admin-token"}]
    assert not by_kind(tls, "Secret"), "existingSecret given: no Secret may be created"


def test_config_change_rolls_pods_but_weights_change_does_not(chart):
    base = load_values("pvc")

    def checksum(values):
        d = one(render(chart, values), "Deployment")
        return d["spec"]["template"]["metadata"]["annotations"]["checksum/config"], d["spec"]["template"]

    c0, t0 = checksum(base)
    v = copy.deepcopy(base)
    v["models"] = [{"name": "mlp", "path": "mlp.pt2", "numRunners": 3}]
    assert checksum(v)[0] != c0
    v = copy.deepcopy(base)
    v["weights"]["version"] = "2026-12-02"
    assert checksum(v)[1] == t0, "a new weights version must hot-swap, not replace the pods"


def test_rollout_job_and_weights_configmap(rendered):
    docs = rendered["pvc"]
    cm = one(docs, "ConfigMap", "-weights")["data"]
    assert cm == {"model": "mlp", "version": "2026-12-01",
                  "file": "/models/weights/mlp-2026-12-01.safetensors",
                  "sha256": "3b7f1c0e4e7a8d6f0a5b2c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f"}
    job = one(docs, "Job", "-rollout")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-upgrade"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["weights", "rollout", "mlp", "weights/mlp-2026-12-01.safetensors"]
    assert f"--headless={RELEASE}-pt2serve-admin:8003" in args and "--server-side" in args
    cron = one(docs, "CronJob", "-rollout")
    assert cron["spec"]["suspend"] is True
    # No version to roll out: no Job, and pods start on the compiled-in weights.
    defaults = rendered["defaults"]
    assert not by_kind(defaults, "Job") and not by_kind(defaults, "CronJob")
    assert one(defaults, "ConfigMap", "-weights")["data"]["version"] == ""


# ----------------------------------------------------------------------- bad values

BAD_VALUES = [
    ({"replicaCount": -1}, "/replicaCount"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "sha256:nothex"}}, "/image/digest"),
    ({"server": {"drainDelayMs": -5}}, "/server/drainDelayMs"),
    ({"server": {"ports": {"admin": 70000}}}, "/server/ports/admin"),
    ({"server": {"logLevel": "verbose"}}, "/server/logLevel"),
    ({"server": {"drainTimeoutMS": 10}}, "drainTimeoutMS"),           # typo'd key
    ({"models": []}, "/models"),
    ({"models": [{"name": "bad name", "path": "m.pt2"}]}, "/models/0/name"),
    ({"models": [{"name": "m", "path": "/abs/m.pt2"}]}, "/models/0/path"),
    ({"models": [{"name": "m", "path": "m.pt2", "isolation": "sandbox"}]}, "/models/0/isolation"),
    ({"models": [{"name": "m", "path": "m.pt2", "numRunners": 0}]}, "/models/0/numRunners"),
    ({"models": [{"name": "m", "path": "m.pt2", "device": "tpu"}]}, "/models/0/device"),
    ({"modelStorage": {"type": "nfs"}}, "/modelStorage/type"),
    ({"modelStorage": {"type": "pvc"}}, "/modelStorage/pvc/existingClaim"),
    ({"modelStorage": {"type": "hostPath"}}, "/modelStorage/hostPath/path"),
    ({"modelStorage": {"type": "emptyDir"}}, "/modelStorage/initContainer"),
    ({"securityContext": {"readOnlyRootFilesystem": False}}, "/securityContext/readOnlyRootFilesystem"),
    ({"securityContext": {"privileged": True}}, "/securityContext/privileged"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"gpu": {"enabled": True, "count": 0}}, "/gpu/count"),
    ({"gpu": {"resourceName": "gpu"}}, "/gpu/resourceName"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"tls": {"inference": {"enabled": True}}}, "/tls/inference"),
    ({"autoscaling": {"enabled": True}, "keda": {"enabled": True}}, "/keda/enabled"),
    ({"autoscaling": {"metricName": "cpu_seconds"}}, "/autoscaling/metricName"),
    ({"weights": {"version": "v2"}}, "/weights/file"),
    ({"weights": {"version": "v 2", "file": "w.safetensors", "sha256": "0" * 64}}, "/weights/version"),
    ({"weights": {"version": "v2", "file": "w.safetensors", "sha256": "ABC"}}, "/weights/sha256"),
    ({"podLabels": {"app.kubernetes.io/name": "other"}}, "/podLabels"),
    ({"fullnameOverride": "Bad_Name"}, "/fullnameOverride"),
    ({"admin": {"token": {"value": "has space"}}}, "/admin/token/value"),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    ({"probes": {"startup": {"enabled": True, "periodSeconds": 0}}}, "/probes/startup/periodSeconds"),
    ({"unknownKey": 1}, "unknownKey"),
]


@pytest.mark.parametrize("values,names", BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_schema_rejects(chart, values, names):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert names in str(err.value), str(err.value)


# --------------------------------------------------------------------------- checkov


def test_checkov_zero_failed(rendered, tmp_path):
    assert CHECKOV.is_file(), f"checkov not installed at {CHECKOV} (scripts/setup.sh installs it)"
    for name, docs in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = subprocess.run(
        [str(CHECKOV), "--framework", "kubernetes", "-d", str(tmp_path), "--compact", "--quiet",
         "--output", "json", "--config-file", str(REPO / "deploy/helm/.checkov.yaml")],
        capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
              for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert not failed, "\n".join(failed)
    assert passed > 100, f"checkov checked almost nothing ({passed} passed): {proc.stderr[-2000:]}"
