#!/usr/bin/env bash
# `Rank` under load on a 10k-item shop (BENCHMARKS.md, "Rank under load"): generates the shop
# once, loads it once into $STORE (later runs reuse the store: restart with a new build and
# measure again), warms the query cache at 100 QPS, then runs each QPS given (default 200 400).
# usage: scripts/bench/rank-10k.sh [QPS...]    env: SHOP=/tmp/shop10k STORE=/tmp/s10 SECONDS_PER_RUN=30
#   BIN=target/release (another build's binaries, e.g. a worktree's, to compare on one store)
#   SCALE=32 USERS=1000 (the shop generated when SHOP has none: 32 -> 9,984 items, 320 -> 99,840)
#   FILTERED=0.5 (the share of requests that also filter to a category; default 0)
#   PROTOCOLS="grpc http" (each QPS is run over each, in turn; http: JSON over HTTP/1.1 to the
#   ranker's --http-listen 127.0.0.1:$HTTP_PORT, default 8053; default grpc only)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOP=${SHOP:-/tmp/shop10k}
STORE=${STORE:-/tmp/s10}
RUN=${SECONDS_PER_RUN:-30}
bin=${BIN:-target/release}
[ -x $bin/souk ] && [ -x $bin/soukctl ] || cargo build --release -p souk -p soukctl
[ -f "$SHOP/products.csv" ] ||
  python3 scripts/gen_demo_data.py --scale "${SCALE:-32}" --users "${USERS:-1000}" --out "$SHOP"
fresh=0
[ -d "$STORE" ] || fresh=1
PROTOCOLS=${PROTOCOLS:-grpc}
HTTP_PORT=${HTTP_PORT:-8053}
$bin/souk up --data-dir "$STORE" --http-listen "127.0.0.1:$HTTP_PORT" > /tmp/souk-up.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 600); do
  $bin/soukctl health > /dev/null 2>&1 && break
  sleep 0.5
done
if [ $fresh = 1 ]; then
  $bin/soukctl kg load "$SHOP/triples.tsv" --quiet
  $bin/soukctl catalog load "$SHOP/products.csv" --quiet
  $bin/soukctl events load "$SHOP/events.csv" --quiet
fi
$bin/soukctl stats
bench() {
  $bin/soukctl bench rank --catalog "$SHOP/products.csv" --events "$SHOP/events.csv" \
    --filtered-share "${FILTERED:-0}" "$@"
}
echo "warm-up (query cache) at 100 QPS"
bench --qps 100 --seconds "$RUN" > /dev/null
for q in "${@:-200 400}"; do
  for qps in $q; do
    for protocol in $PROTOCOLS; do
      echo "== $qps QPS over $protocol"
      if [ "$protocol" = http ]; then
        bench --qps "$qps" --seconds "$RUN" --http "127.0.0.1:$HTTP_PORT"
      else
        bench --qps "$qps" --seconds "$RUN"
      fi
    done
  done
done
