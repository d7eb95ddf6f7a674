#!/usr/bin/env python3
"""Writes deploy/helm/pt2serve/values.schema.json (run after changing values.yaml).

The schema is written here as Python so shared pieces (resources, probes, TLS)
are defined once; tests/deploy/test_chart.py checks the committed file is what
this script produces and that every key of values.yaml is in it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "pt2serve" / "values.schema.json"


def obj(props: dict, required: list[str] | None = None, **extra) -> dict:
    """A closed object: unknown keys are errors (typos never pass silently)."""
    o = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        o["required"] = required
    o.update(extra)
    return o


def string(**kw) -> dict:
    return {"type": "string", **kw}


def integer(minimum: int | None = None, maximum: int | None = None) -> dict:
    o: dict = {"type": "integer"}
    if minimum is not None:
        o["minimum"] = minimum
    if maximum is not None:
        o["maximum"] = maximum
    return o


BOOL = {"type": "boolean"}
PORT = integer(1, 65535)
DNS1123_LABEL = string(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", maxLength=63)
DNS1123_SUBDOMAIN = string(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", maxLength=253)
OPT_DNS1123_SUBDOMAIN = string(pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", maxLength=253)
QUANTITY = {"anyOf": [{"type": "integer", "minimum": 0},
                      {"type": "string",
                       "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"}]}
RESOURCE_LIST = {"type": "object", "additionalProperties": QUANTITY}
RESOURCES = obj({"requests": RESOURCE_LIST, "limits": RESOURCE_LIST, "claims": {"type": "array"}})
ANY_OBJECT = {"type": "object"}
ANY_LIST = {"type": "array"}
SECCOMP = obj({"type": string(enum=["RuntimeDefault", "Localhost", "Unconfined"]),
               "localhostProfile": string()})
# Hardened by construction: the schema refuses settings that would undo it.
CONTAINER_SECURITY = obj({
    "runAsNonRoot": {"const": True},
    "runAsUser": integer(1),
    "runAsGroup": integer(1),
    "allowPrivilegeEscalation": {"const": False},
    "readOnlyRootFilesystem": {"const": True},
    "privileged": {"const": False},
    "capabilities": obj({"drop": {"type": "array", "contains": {"const": "ALL"}},
                         "add": {"type": "array", "maxItems": 0}}),
    "seccompProfile": SECCOMP,
}, required=["runAsNonRoot", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"])
POD_SECURITY = obj({
    "runAsNonRoot": {"const": True},
    "runAsUser": integer(1),
    "runAsGroup": integer(1),
    "fsGroup": integer(0),
    "fsGroupChangePolicy": string(enum=["Always", "OnRootMismatch"]),
    "supplementalGroups": {"type": "array", "items": integer(0)},
    "seccompProfile": SECCOMP,
    "sysctls": ANY_LIST,
}, required=["runAsNonRoot"])


def probe(default_service: str) -> dict:
    return obj({
        "enabled": BOOL,
        "grpcService": string(description=f"grpc.health.v1 service name (default {default_service!r})"),
        "initialDelaySeconds": integer(0),
        "periodSeconds": integer(1),
        "timeoutSeconds": integer(1),
        "failureThreshold": integer(1),
        "successThreshold": integer(1),
        "terminationGracePeriodSeconds": integer(1),
    }, required=["enabled"])


def tls(with_ca: bool) -> dict:
    props = {"enabled": BOOL, "secretName": OPT_DNS1123_SUBDOMAIN,
             "clientCaSecretName": OPT_DNS1123_SUBDOMAIN}
    if with_ca:
        props["caSecretName"] = OPT_DNS1123_SUBDOMAIN
        props["clientCertSecretName"] = OPT_DNS1123_SUBDOMAIN
    o = obj(props, required=["enabled"])
    # Enabled TLS needs its Secret.
    o["if"] = {"properties": {"enabled": {"const": True}}}
    o["then"] = {"properties": {"secretName": {"minLength": 1}}, "required": ["secretName"]}
    return o


MODEL = obj({
    "name": string(pattern=r"^[A-Za-z0-9_.-]+$", minLength=1),
    "path": string(minLength=1, pattern=r"^[^/].*\.pt2$",
                   description="relative to modelStorage.mountPath"),
    "device": string(pattern=r"^(auto|cpu|mps|(cuda|xpu)(:[0-9]+)?(,(cuda|xpu)(:[0-9]+)?)*)$"),
    "numRunners": integer(1, 64),
    "maxQueueSize": integer(0),
    "timeoutMs": integer(0),
    "cpuThreads": integer(0, 1024),
    # process: a pt2serve-worker child per replica that restarts after a crash (docs/containment.md)
    "isolation": string(enum=["in_process", "process"]),
}, required=["name", "path"])

SCHEMA = obj({
    "nameOverride": string(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", maxLength=40),
    "fullnameOverride": string(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", maxLength=52),
    "global": ANY_OBJECT,
    "image": obj({
        "repository": string(minLength=1),
        "tag": string(pattern=r"^([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"),
        "digest": string(pattern=r"^(sha256:[a-f0-9]{64})?$"),
        "pullPolicy": string(enum=["Always", "IfNotPresent", "Never"]),
    }, required=["repository", "pullPolicy"]),
    "imagePullSecrets": {"type": "array", "items": obj({"name": DNS1123_SUBDOMAIN}, ["name"])},
    "replicaCount": integer(0),
    "strategy": obj({
        "type": string(enum=["RollingUpdate", "Recreate"]),
        "rollingUpdate": obj({"maxSurge": {"type": ["integer", "string"]},
                              "maxUnavailable": {"type": ["integer", "string"]}}),
    }, required=["type"]),
    "resources": RESOURCES,
    "gpu": obj({
        "enabled": BOOL,
        "count": integer(1),
        "resourceName": string(pattern=r"^[a-z0-9.-]+/[a-z0-9][-a-z0-9_.]*$"),
    }, required=["enabled", "count", "resourceName"]),
    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "tolerations": ANY_LIST,
    "affinity": ANY_OBJECT,
    "topologySpreadConstraints": {"type": "array", "items": {
        "type": "object", "required": ["maxSkew", "topologyKey", "whenUnsatisfiable"]}},
    "priorityClassName": OPT_DNS1123_SUBDOMAIN,
    "runtimeClassName": OPT_DNS1123_SUBDOMAIN,
    "podAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "podLabels": {"type": "object", "additionalProperties": {"type": "string"},
                  "not": {"anyOf": [{"required": [k]} for k in (
                      "app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/component")]}},
    "podSecurityContext": POD_SECURITY,
    "securityContext": CONTAINER_SECURITY,
    "tmpDir": obj({"sizeLimit": QUANTITY, "medium": string(enum=["", "Memory"])}),
    "serviceAccount": obj({"create": BOOL, "name": OPT_DNS1123_SUBDOMAIN,
                           "annotations": {"type": "object",
                                           "additionalProperties": {"type": "string"}}}),
    "server": obj({
        "ports": obj({"inference": PORT, "metrics": PORT, "admin": PORT},
                     required=["inference", "metrics", "admin"]),
        "maxMessageBytes": integer(1, 2147483647),
        "drainDelayMs": integer(0, 600000),
        "drainTimeoutMs": integer(0, 3600000),
        "terminationMarginSeconds": integer(0, 3600),
        "preStopSleepSeconds": integer(0, 600),
        "maxConnectionAgeMs": integer(0),
        "maxConnectionAgeGraceMs": integer(0),
        "logLevel": string(enum=["trace", "debug", "info", "warn", "error", "critical", "off"]),
        "logFormat": string(enum=["text", "json"]),
        "accessLog": BOOL,
        "extraArgs": {"type": "array", "items": {"type": "string"}},
        "extraEnv": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    }, required=["ports", "drainDelayMs", "drainTimeoutMs", "terminationMarginSeconds"]),
    "models": {"type": "array", "minItems": 1, "items": MODEL},
    "modelStorage": obj({
        "type": string(enum=["image", "pvc", "hostPath", "emptyDir"]),
        "mountPath": string(pattern=r"^/.+"),
        "pvc": obj({"existingClaim": OPT_DNS1123_SUBDOMAIN, "subPath": string()}),
        "hostPath": obj({"path": string(), "type": string(enum=["Directory", "DirectoryOrCreate"])}),
        "emptyDir": obj({"sizeLimit": QUANTITY}),
        "initContainer": obj({"image": string(), "command": {"type": "array", "items": string()},
                              "args": {"type": "array", "items": string()},
                              "resources": RESOURCES}),
    }, required=["type", "mountPath"], allOf=[
        {"if": {"properties": {"type": {"const": "pvc"}}},
         "then": {"properties": {"pvc": {"properties": {"existingClaim": {"minLength": 1}}}}}},
        {"if": {"properties": {"type": {"const": "hostPath"}}},
         "then": {"properties": {"hostPath": {"properties": {"path": {"minLength": 2,
                                                                      "pattern": "^/"}}}}}},
        {"if": {"properties": {"type": {"const": "emptyDir"}}},
         "then": {"properties": {"initContainer": {"properties": {
             "image": {"minLength": 1}, "command": {"minItems": 1}}}}}},
    ]),
    "probes": obj({"startup": probe(""), "readiness": probe(""), "liveness": probe("liveness")},
                  required=["startup", "readiness", "liveness"]),
    "service": obj({"type": string(enum=["ClusterIP", "NodePort", "LoadBalancer"]),
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    "headless": BOOL}),
    "admin": obj({"enabled": BOOL, "token": obj({
        "existingSecret": OPT_DNS1123_SUBDOMAIN,
        "secretKey": string(pattern=r"^[-._a-zA-Z0-9]+$"),
        "value": string(pattern=r"^[!-~]*$", description="printable ASCII, no spaces"),
    })}, required=["enabled"]),
    "networkPolicy": obj({"enabled": BOOL, "inferenceFrom": ANY_LIST, "metricsFrom": ANY_LIST}),
    "tls": obj({"inference": tls(False), "admin": tls(True)}),
    "podDisruptionBudget": obj({
        "enabled": BOOL,
        "maxUnavailable": {"anyOf": [integer(0), string(pattern=r"^[0-9]+%$")]},
        "minAvailable": {"anyOf": [integer(0), string(pattern=r"^([0-9]+%?)?$")]},
    }),
    "autoscaling": obj({
        "enabled": BOOL,
        "minReplicas": integer(1),
        "maxReplicas": integer(1),
        "metricName": string(enum=["pt2serve_queue_depth", "pt2serve_inflight_requests"]),
        "targetAverageValue": {"anyOf": [integer(1), QUANTITY["anyOf"][1]]},
        "targetCPUUtilizationPercentage": integer(0, 100),
        "behavior": ANY_OBJECT,
    }),
    "keda": obj({
        "enabled": BOOL,
        "minReplicas": integer(0),
        "maxReplicas": integer(1),
        "prometheusAddress": string(pattern=r"^https?://"),
        "query": string(),
        "threshold": {"type": ["string", "integer"]},
        "pollingInterval": integer(1),
        "cooldownPeriod": integer(0),
    }),
    "serviceMonitor": obj({"enabled": BOOL, "interval": string(pattern=r"^[0-9]+(ms|s|m|h)$"),
                           "labels": {"type": "object",
                                      "additionalProperties": {"type": "string"}}}),
    "weights": obj({
        "model": string(pattern=r"^[A-Za-z0-9_.-]+$"),
        "version": string(pattern=r"^([A-Za-z0-9_.:+-]{1,128})?$",
                          description="no spaces or quotes; '' = compiled-in weights"),
        "file": string(pattern=r"^([^/].*\.safetensors)?$"),
        "sha256": string(pattern=r"^([a-f0-9]{64})?$"),
        "rollout": obj({
            "hook": BOOL,
            "cronJob": BOOL,
            "stageTimeoutSeconds": integer(1),
            "commitTimeoutSeconds": integer(1),
            "backoffLimit": integer(0),
            "activeDeadlineSeconds": integer(1),
            "resources": RESOURCES,
        }),
    }, required=["model", "version"],
        # A version to roll out needs its file and checksum.
        **{"if": {"properties": {"version": {"minLength": 1}}},
           "then": {"properties": {"file": {"minLength": 1}, "sha256": {"minLength": 64}}}}),
    "tests": obj({"enabled": BOOL}),
}, allOf=[
    # The HPA and KEDA would fight over the Deployment's replicas.
    {"if": {"properties": {"autoscaling": {"properties": {"enabled": {"const": True}}}},
            "required": ["autoscaling"]},
     "then": {"properties": {"keda": {"properties": {"enabled": {
         "const": False, "description": "keda.enabled excludes autoscaling.enabled"}}}}}},
])
SCHEMA["$schema"] = "http://json-schema.org/draft-07/schema#"
SCHEMA["title"] = "pt2serve chart values"


def render() -> str:
    return json.dumps(SCHEMA, indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if OUT.read_text() == render() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT}")
