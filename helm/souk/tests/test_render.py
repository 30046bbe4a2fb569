#!/usr/bin/env python3
"""Asserts what matters in the rendered chart:
python3 test_render.py DEFAULT.yaml GPU.yaml ALERTS.yaml REPO_ROOT PUBLIC.yaml.

Run by scripts/check-helm.sh after `helm template`; needs PyYAML (kubernetes-validate brings it).
"""
import pathlib
import re
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
    assert env(container(kg))["SOUK_COMPACT_AFTER"] == "100000", "the graph compacts its store"
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
    config = by_kind(docs, "ConfigMap", "-config")["data"]
    assert config["SOUK_ENCODER_CHECK_MS"] == "30000", "the ranker checks the encoder's model"
    assert config["SOUK_REEMBED_ON_MODEL_CHANGE"] == "false", "re-embedding waits for an admin"
    # A replica never copies a primary's store of another history unless told to, and pod 0
    # restores from a replica only when told which.
    assert config["SOUK_ACCEPT_NEW_PRIMARY_STORE"] == "false"
    assert config["SOUK_RESTORE_FROM"] == ""
    secret = by_kind(docs, "Secret", "-secrets")
    assert set(secret["data"]) == {"admin-token", "user-id-key"}
    ranker = container(by_kind(docs, "StatefulSet", "-ranker"))
    names = {e["name"] for e in ranker["env"]}
    assert {"SOUK_ADMIN_TOKEN", "SOUK_USER_ID_KEY"} <= names
    # Replicas follow pod 0 by its stable DNS name, which only the headless Service gives.
    primary = env(ranker)["SOUK_RANKER_PRIMARY"]
    headless = by_kind(docs, "Service", "-ranker-headless")
    assert primary.startswith("http://souk-ranker-0." + headless["metadata"]["name"] + "."), primary
    assert primary.endswith(":50053"), primary
    writes = by_kind(docs, "Service", "-ranker-primary")
    assert writes["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "souk-ranker-0"
    # JSON over HTTP for shops without gRPC: the ranker listens where its Services send it.
    assert env(ranker)["SOUK_HTTP_LISTEN"] == "0.0.0.0:8080"
    assert "SOUK_HTTP_CORS_ORIGINS" not in env(ranker), "no browser origin unless named"
    assert "SOUK_HTTP_METHODS" not in env(ranker), "every unary method unless named"
    assert "SOUK_HTTP_CACHE_MAX_AGE_S" not in env(ranker), "no cache-control unless asked"
    assert "SOUK_EMBEDDING_DIMENSIONS" not in env(ranker), "whole vectors unless asked"
    http = {p["name"]: p["containerPort"] for p in ranker["ports"]}["http"]
    for suffix in ("-ranker", "-ranker-primary"):
        ports = {p["name"]: p for p in by_kind(docs, "Service", suffix)["spec"]["ports"]}
        assert ports["http"]["targetPort"] == "http" and ports["http"]["port"] == http, suffix


def check_health_test(docs):
    """`helm test` runs soukctl against the Services the chart makes, on their ports."""
    pod = by_kind(docs, "Pod", "-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test", "only `helm test` runs it"
    c = pod["spec"]["containers"][0]
    assert c["command"][-1] == "soukctl health && soukctl stats", c["command"]
    services = {
        d["metadata"]["name"]: {p["name"]: p["port"] for p in d["spec"]["ports"]}
        for d in docs
        if d["kind"] == "Service"
    }
    for var, suffix in [("SOUK_ENCODER_URL", "-encoder"), ("SOUK_KG_URL", "-kg"), ("SOUK_RANKER_URL", "-ranker")]:
        url = env(c)[var]
        host, port = url.removeprefix("http://").split(":")
        assert host.endswith(suffix) and host in services, f"{var}={url}: no such Service"
        assert int(port) == services[host]["grpc"], f"{var}={url}: not the Service's gRPC port"
    assert c["securityContext"]["readOnlyRootFilesystem"], "hardened like the services"
    assert pod["spec"]["securityContext"]["runAsNonRoot"]
    assert pod["spec"]["restartPolicy"] == "Never", "a failed check is a failed test, not a retry"


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


def check_public(docs):
    """A ranker whose HTTP port faces browsers: the origins and the methods reach the pod."""
    ranker = env(container(by_kind(docs, "StatefulSet", "-ranker")))
    assert ranker["SOUK_HTTP_CORS_ORIGINS"] == "https://shop.example"
    assert ranker["SOUK_HTTP_METHODS"] == "Rank,souk.ranker.v1.Ranker/Suggest"
    assert ranker["SOUK_HTTP_CACHE_MAX_AGE_S"] == "60"
    assert ranker["SOUK_EMBEDDING_DIMENSIONS"] == "256", "the vectors' cut reaches the pod"


def exported_metrics(root):
    """Every souk metric name the Rust sources register (the registry prefixes `souk_`)."""
    names = set()
    for path in pathlib.Path(root, "services").rglob("*.rs"):
        names.update(re.findall(r'"([a-z_]+)"', path.read_text(encoding="utf-8")))
    for path in pathlib.Path(root, "shared", "src").rglob("*.rs"):
        names.update(re.findall(r'"([a-z_]+)"', path.read_text(encoding="utf-8")))
    return {"souk_" + n for n in names}


def check_alerts(default_docs, docs, root):
    assert not [d for d in default_docs if d["kind"] == "PrometheusRule"], "alerts are opt-in"
    rule = by_kind(docs, "PrometheusRule", "-alerts")
    assert rule["metadata"]["labels"]["release"] == "prom", "the ruleSelector's labels reach it"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert {"SoukRankLostSignal", "SoukRankFallbackScans", "SoukRankErrors", "SoukRankSlow", "SoukEncoderBacklog", "SoukEncoderModelDiffers", "SoukRankerReplicaOutOfSync", "SoukRankerOutboxBacklog", "SoukRankerGraphOutboxBacklog", "SoukGraphCompactionFailing", "SoukStoreWriteFailed"} <= alerts
    exported = exported_metrics(root)
    import promql_parser
    for r in rules:
        promql_parser.parse(r["expr"])  # raises on a syntax error
        for metric in re.findall(r"\b(souk_[a-z_]+?)(?:_bucket|_count|_sum)?\{", r["expr"]):
            assert metric in exported, f"{r['alert']} reads {metric}, which no service exports"
        assert r["labels"]["severity"] in ("warning", "critical")
    slow = next(r for r in rules if r["alert"] == "SoukRankSlow")
    assert "> 0.5" in slow["expr"], "the p99 threshold value reaches the rule"


if __name__ == "__main__":
    default = load(sys.argv[1])
    check_default(default)
    check_health_test(default)
    check_gpu(load(sys.argv[2]))
    check_alerts(default, load(sys.argv[3]), sys.argv[4])
    check_public(load(sys.argv[5]))
    print("chart render checks passed")
