#!/usr/bin/env bash
# A primary ranker killed with kill -9 under a following replica, at scale: how soon after
# the primary's restart the replica is in sync again, and how (a whole copy or a resume).
#
#   scripts/bench/replica-crash.sh STORE [ITEMS EVENTS]
#
# STORE: a primary's store, filled first when it does not exist (the shop of the
# `replica_cost` example: ITEMS items, EVENTS events, default 100000 and 1000000; its HNSW
# graph saved). Then the replica is killed, the primary takes 1,000 events and is killed
# too, and both start again: the replica's start to in sync. Runs target/release/souk-ranker and soukctl (RANKER=/path/to/souk-ranker
# to compare another build of the ranker: a store written by this build cannot be opened by
# one before session 25); no encoder or graph runs. Each run adds an event to STORE.
set -euo pipefail
cd "$(dirname "$0")/../.."
store=${1:?STORE [ITEMS EVENTS]}
items=${2:-100000}
events=${3:-1000000}
ranker=${RANKER:-target/release/souk-ranker}
cargo build --release -q -p souk-ranker -p soukctl --bin souk-ranker --bin soukctl
if [ ! -d "$store" ]; then
  cargo run --release -q -p souk-ranker --example load_cost -- "$store" "$items" "$events" 0
fi
work=$(mktemp -d)
trap 'pkill -9 -f "data-dir $work/replica" 2>/dev/null; pkill -9 -f "data-dir $store" 2>/dev/null; rm -rf "$work"' EXIT
nowhere=http://127.0.0.1:9
start() { # DIR PORT [PRIMARY_PORT]
  local follow=()
  [ -n "${3:-}" ] && follow=(--primary "http://127.0.0.1:$3")
  "$ranker" --listen "127.0.0.1:$2" --data-dir "$1" --encoder-url $nowhere --kg-url $nowhere \
    --user-id-key replica-cost "${follow[@]}" >"$work/log-$2" 2>&1 &
  echo $!
}
stats() { target/release/soukctl --ranker-url "http://127.0.0.1:$1" stats 2>/dev/null || true; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
wait_for() { # PORT PATTERN: fails when the ranker on PORT has exited
  until stats "$1" | grep -q "$2"; do
    if ! pgrep -f -- "--listen 127.0.0.1:$1 " >/dev/null; then
      echo "the ranker on port $1 exited:" >&2
      grep -v '^  ' "$work/log-$1" | tail -3 >&2
      exit 1
    fi
    sleep 0.05
  done
}

t=$(now)
primary=$(start "$store" 50190)
wait_for 50190 "catalog:"
echo "primary start: $(since "$t") s"
t=$(now)
replica=$(start "$work/replica" 50191 50190)
wait_for 50191 "in sync (takes"
echo "replica's first copy: $(since "$t") s"
target/release/soukctl --ranker-url http://127.0.0.1:50190 events load /dev/stdin >/dev/null <<EOF
user_id,item_id,kind,value,timestamp_ms
crash1,p000001,click,1,1700000000000
EOF
sleep 1
kill -9 "$primary"
while kill -0 "$primary" 2>/dev/null; do sleep 0.01; done
t=$(now)
primary=$(start "$store" 50190)
wait_for 50190 "catalog:"
echo "primary restart after kill -9: $(since "$t") s"
until stats 50191 | grep -Eq "caught up since start: (2 by copying|1 by copying the whole store, 1 from)"; do
  sleep 0.05
done
wait_for 50191 "in sync (takes"
echo "replica in sync again: $(since "$t") s after the primary's restart began"
stats 50191 | grep -E "catalog:|caught up"

# 2. The replica down while the primary takes 10 writes of 100 events and is killed; both
# started again: the replica's start to in sync (its own store replayed, then the writes it
# lacks, or a whole copy).
kill -9 "$replica"
while kill -0 "$replica" 2>/dev/null; do sleep 0.01; done
python3 - "$work/events.csv" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("user_id,item_id,kind,value,timestamp_ms\n")
    for i in range(1000):
        f.write(f"behind{i % 37},p{i % 997:06d},click,1,{1700000000000 + i}\n")
PY
target/release/soukctl --ranker-url http://127.0.0.1:50190 events load "$work/events.csv" \
  --batch-size 100 >/dev/null 2>&1
kill -9 "$primary"
while kill -0 "$primary" 2>/dev/null; do sleep 0.01; done
start "$store" 50190 >/dev/null
wait_for 50190 "catalog:"
t=$(now)
start "$work/replica" 50191 50190 >/dev/null
until stats 50191 | grep -Eq "caught up since start: (1 by copying|0 by copying the whole store, 1 from)"; do
  sleep 0.05
done
wait_for 50191 "in sync (takes"
echo "replica behind the killed primary, restarted: in sync $(since "$t") s after its start"
stats 50191 | grep -E "catalog:|caught up"
