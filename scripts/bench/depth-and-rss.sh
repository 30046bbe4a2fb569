#!/usr/bin/env bash
# Resident memory of `souk up` once ready, and the server-side time of deep and diverse `Rank`
# requests (BENCHMARKS.md, "Session 12"): starts BIN's souk on STORE, waits for health and 5 s
# more, reads VmRSS, then ranks three queries at k 10 / 1000 with diversity 0.5, k 1000
# without, and pages past the first tiers (offset 64 / 300), printing the time soukctl reports. Run two builds alternately on one store.
# usage: scripts/bench/depth-and-rss.sh BIN_DIR STORE   env: CTL=target/release/soukctl
set -euo pipefail
bin=$1 store=$2
ctl=${CTL:-target/release/soukctl}
$bin/souk up --data-dir "$store" > /tmp/depth-and-rss.log 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 600); do $ctl health > /dev/null 2>&1 && break; sleep 0.5; done
sleep 5
echo "$bin: VmRSS $(awk '/VmRSS/ {print $2}' /proc/$pid/status) kB"
for q in tent "black leather" lamp; do
  for args in "-k 10 --diversity 0.5" "-k 1000 --diversity 0.5" "-k 1000 --diversity 0" \
    "-k 16 --offset 64" "-k 20 --offset 300" "-k 16 --offset 64 --diversity 0.5"; do
    # shellcheck disable=SC2086
    echo "  $q $args: $($ctl rank -q "$q" $args 2>&1 > /dev/null | grep -o '[0-9.]* ms')"
  done
done
