#!/usr/bin/env bash
# Encoder CPU throughput: souk's dynamic batcher (candle) against sentence-transformers, same
# 2,000 product-title-like texts, same batch sizes, one after the other on this machine; peak
# RSS of each from /usr/bin/time. sentence-transformers runs in a throwaway venv (BENCH_VENV,
# default /tmp/bench-venv), never a test dependency.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${BENCH_VENV:-/tmp/bench-venv}
MODEL=${MODEL_DIR:-models/all-MiniLM-L6-v2}
BATCHES=${BATCHES:-1,32,128}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sentence_transformers" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q sentence-transformers
fi
cargo build --release -q -p souk-encoder --bin souk-encoder-bench
python3 scripts/gen_bench_texts.py > /tmp/souk-bench-texts.txt
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
# The matrix kernel alone on one thread against this core's FMA ceiling (same run).
./target/release/souk-encoder-bench --model "$MODEL" gemm
for b in ${BATCHES//,/ }; do
  # candle's own graph (padded batches), for comparison with the packed path that serves.
  echo "candle path (--engine graph):"
  /usr/bin/time -f "  peak RSS %M KB" ./target/release/souk-encoder-bench --model "$MODEL" --engine graph texts /tmp/souk-bench-texts.txt --batch "$b" --repeat 3
  echo "packed path (default):"
  /usr/bin/time -f "  peak RSS %M KB" ./target/release/souk-encoder-bench --model "$MODEL" texts /tmp/souk-bench-texts.txt --batch "$b" --repeat 3
  # Two callers, two single-threaded inference workers (souk-encoder --inference-workers 2).
  RAYON_NUM_THREADS=1 /usr/bin/time -f "  peak RSS %M KB" ./target/release/souk-encoder-bench --model "$MODEL" texts /tmp/souk-bench-texts.txt --batch "$b" --repeat 3 --concurrency 2 --workers 2
done
/usr/bin/time -f "  peak RSS %M KB" "$VENV/bin/python" scripts/bench/st_bench.py "$MODEL" /tmp/souk-bench-texts.txt "$BATCHES"
