#!/usr/bin/env bash
# Recommendations for returning shoppers through the real suite (BENCHMARKS.md, "Session 13:
# related items"): starts BIN's souk on STORE, ranks k 10 without a query for N shoppers of
# EVENTS (those with the most recent events last in the file), and prints how many results a
# direct graph relation explains ("an accessory for", "goes with") and the time soukctl
# reports per request. Run two builds alternately on one store.
# usage: scripts/bench/related.sh BIN_DIR STORE EVENTS [N]
set -euo pipefail
bin=$1 store=$2 events=$3 n=${4:-100}
ctl=$bin/soukctl
$bin/souk up --data-dir "$store" > /tmp/related-bench.log 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 600); do $ctl health > /dev/null 2>&1 && break; sleep 0.5; done
sleep 3
users=$(tail -n 20000 "$events" | cut -d, -f1 | awk '!seen[$0]++' | head -n "$n" || true)
related=0 results=0 times=()
for u in $users; do
  out=$($ctl rank --user "$u" -k 10 2>/tmp/related-bench.err)
  results=$((results + $(grep -c '^ *[0-9]*\. ' <<< "$out" || true)))
  related=$((related + $(grep -c -e 'an accessory for' -e 'goes with' <<< "$out" || true)))
  times+=("$(grep -o '[0-9.]* ms' /tmp/related-bench.err | cut -d' ' -f1)")
done
printf '%s\n' "${times[@]}" | sort -n | awk -v b="$bin" -v r="$related" -v t="$results" \
  '{a[NR]=$1; s+=$1} END {printf "%s: %d of %d results explained by a direct relation; rank ms mean %.2f p50 %.2f p90 %.2f\n", b, r, t, s/NR, a[int(NR/2)+1], a[int(NR*0.9)]}'
