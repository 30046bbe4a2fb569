#!/usr/bin/env bash
# Two builds of souk-encoder-bench against each other on the same texts, alternating (A, B,
# A, B, sentence-transformers, A, B), so that the shared host's drift lands on both: the
# comparison to read for a change to the encoder's CPU path. Build A first, e.g.
#   git stash; cargo build --release -p souk-encoder --bin souk-encoder-bench
#   cp target/release/souk-encoder-bench /tmp/bench-a; git stash pop; (build again) ...
# Usage: scripts/bench/encoder-ab.sh /tmp/bench-a target/release/souk-encoder-bench [BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:?first souk-encoder-bench binary}
B=${2:?second souk-encoder-bench binary}
BATCH=${3:-32}
VENV=${BENCH_VENV:-/tmp/bench-venv}
MODEL=${MODEL_DIR:-models/all-MiniLM-L6-v2}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sentence_transformers" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q sentence-transformers
fi
python3 scripts/gen_bench_texts.py > /tmp/souk-bench-texts.txt
pair() {
  for bin in "$A" "$B"; do
    echo "$bin: $("$bin" --model "$MODEL" texts /tmp/souk-bench-texts.txt --batch "$BATCH" --repeat 3 | grep -o 'texts_per_s=[0-9.]*')"
  done
}
pair
pair
"$VENV/bin/python" scripts/bench/st_bench.py "$MODEL" /tmp/souk-bench-texts.txt "$BATCH" 2>/dev/null | grep engine
pair
