#!/usr/bin/env python3
"""Asserts what matters in the rendered chart: python3 test_render.py DEFAULT.yaml GPU.yaml.

Run by scripts/check-helm.sh after `helm template`; needs PyYAML (kubernetes-validate brings it).
"""
import sys

import yaml


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind, suffix):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, found {len(found)}"
    return found[0]


def container(workload):
    return workload["spec"]["template"]["spec"]["containers"][0]


def env(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def check_default(docs):
    kg = by_kind(docs, "StatefulSet", "-kg")
    assert kg["spec"]["replicas"] == 1, "one writer"
    claims = kg["spec"]["volumeClaimTemplates"]
    assert claims and claims[0]["metadata"]["name"] == "data", "the graph keeps its store on a volume"
    mounts = {m["name"]: m["mountPath"] for m in container(kg)["volumeMounts"]}
    assert env(container(kg))["SOUK_DATA_DIR"].startswith(mounts["data"]), "the store lives on the volume"
    for kind, suffix, port in [("Deployment", "-encoder", 50051), ("StatefulSet", "-kg", 50052), ("StatefulSet", "-ranker", 50053)]:
        w = by_kind(docs, kind, suffix)
        c = container(w)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{suffix} {probe} must hit the gRPC health port {port}"
        assert env(c)["SOUK_LISTEN"].endswith(f":{port}")
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], f"{suffix}: hardened"
        assert w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
        assert "limits" in c["resources"] and "requests" in c["resources"]
        ann = w["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
    encoder = container(by_kind(docs, "Deployment", "-encoder"))
    assert "nvidia.com/gpu" not in encoder["resources"].get("limits", {}), "CPU by default"
    assert env(encoder)["SOUK_DEVICE"] == "cpu"
    assert env(encoder)["SOUK_ENCODER_ENGINE"] == "auto", "CPU pods pick the packed engine"
    secret = by_kind(docs, "Secret", "-secrets")
    assert set(secret["data"]) == {"admin-token", "user-id-key"}
    ranker = container(by_kind(docs, "StatefulSet", "-ranker"))
    names = {e["name"] for e in ranker["env"]}
    assert {"SOUK_ADMIN_TOKEN", "SOUK_USER_ID_KEY"} <= names


def check_gpu(docs):
    encoder = by_kind(docs, "Deployment", "-encoder")
    c = container(encoder)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1, "GPU values request a GPU"
    assert env(c)["SOUK_DEVICE"] == "cuda:0"
    assert env(c)["SOUK_ENCODER_ENGINE"] == "flash", "the GPU values' engine reaches the pod"
    assert "cuda" in c["image"], "the CUDA image"
    spec = encoder["spec"]["template"]["spec"]
    assert spec["nodeSelector"].get("nvidia.com/gpu.present") == "true"
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec["tolerations"])


if __name__ == "__main__":
    check_default(load(sys.argv[1]))
    check_gpu(load(sys.argv[2]))
    print("chart render checks passed")
