#!/usr/bin/env bash
# Prepares target-cuda/gpu-bundle for scripts/gpu/run-gpu-check.sh: the stripped CUDA bench
# binary (scripts/build-cuda.sh first), the model with f16 weights (45 MB, so the bundle fits
# the 64 MiB the device tool carries), texts, and CPU f32 reference vectors computed here from
# those same f16-rounded weights.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
bundle=target-cuda/gpu-bundle
mkdir -p "$bundle"
cargo build --release -p souk-encoder --bin souk-encoder-bench
rm -rf "$bundle/model"
target/release/souk-encoder-bench --dtype f16 convert "$bundle/model"
{
  python3 scripts/gen_bench_texts.py | head -256
  python3 -c 'import json,sys; [print(i["text"].replace("\n"," ").replace("\r"," ")) for i in json.load(open(sys.argv[1]))["items"]]' \
    integration-tests/tests/data/minilm-reference.json
} > "$bundle/agree-texts.txt"
target/release/souk-encoder-bench --model "$bundle/model" reference "$bundle/agree-texts.txt" "$bundle/reference.json"
# The stripped binary is ~53 MB, mostly PTX text; xz takes it to ~6 MB so the bundle
# (with the 45 MB f16 model) fits what the device tool carries.
strip -o "$bundle/souk-encoder-bench" target-cuda/release/souk-encoder-bench
xz -T2 -9 -f "$bundle/souk-encoder-bench"
du -sh "$bundle"
