#!/usr/bin/env bash
# A graph that churns (BENCHMARKS.md, "Session 47: compacting a churned graph store"): loads a
# 5M-triple shop graph into a fresh store, then ROUNDS times removes 700k random triples and
# loads them back (a recolouring feed at scale), printing each command's time, the store's size
# on disk and the restart time (`graph rebuilt from the store` log line) after every round.
# Then (COMPACT=1, the default) `souk-kg --compact-into` writes the store anew, and the churned
# and the compacted store are restarted in turn, three times each. Several builds run one
# after the other: KG_BINS="/tmp/souk-kg-old target/release/souk-kg" (COMPACT=0 for a build
# without --compact-into).
# The service compacts a churned store itself while it serves (from session 48, with
# --compact-after 100000 by default): every compaction it did is printed after the command
# that set it off, once done ("writes_held_ms": how long loads waited; from session 49 the delete
# sets one off that runs while the load back does). KG_ARGS="--compact-after 0" keeps
# the store churned, as session 47 measured it.
# usage: scripts/bench/kg-churn.sh    env: ROUNDS=2 STORE=/tmp/kgchurn PORT=50073 COMPACT=1
#   KG_BINS (souk-kg binaries, default target/release/souk-kg) TRIPLES=/tmp/kg-5m.tsv KG_ARGS
set -euo pipefail
cd "$(dirname "$0")/../.."
TRIPLES=${TRIPLES:-/tmp/kg-5m.tsv}
DEL=${TRIPLES%.tsv}-churn-700k.tsv
STORE=${STORE:-/tmp/kgchurn}
PORT=${PORT:-50073}
ctl=target/release/soukctl
[ -x $ctl ] && [ -x target/release/souk-kg ] || cargo build --release -p souk-kg -p soukctl
[ -f "$TRIPLES" ] || python3 scripts/bench/gen_triples.py 5000000 > "$TRIPLES"
[ -f "$DEL" ] || shuf -n 700000 --random-source=<(yes 1) "$TRIPLES" > "$DEL"
C="$ctl --kg-url http://127.0.0.1:$PORT"
log=/tmp/kg-churn.log
start() { # binary [store]
  : > $log.start
  seen=0
  # shellcheck disable=SC2086
  "$1" --data-dir "${2:-$STORE}" --listen "127.0.0.1:$PORT" ${KG_ARGS:-} > $log.start 2>&1 &
  pid=$!
  for _ in $(seq 600); do grep -q "graph rebuilt" $log.start && return; sleep 0.2; done
  echo "souk-kg did not start" >&2; exit 1
}
compactions() { # the running service's compactions since the last call, once none runs
  seen=${seen:-0}
  for _ in $(seq 300); do
    [ "$(grep -c "compacting the store" $log.start)" -le "$(grep -c "compacted while serving" $log.start)" ] && break
    sleep 0.2
  done
  grep "compacted while serving" $log.start | tail -n +$((seen + 1)) |
    grep -o 'triples=.*writes_held_ms=[0-9]*' |
    sed 's/^/  compacted while serving: /' || true
  seen=$(grep -c "compacted while serving" $log.start || true)
}
stop() {
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
restart() { # binary [store]
  echo "  peak RSS of this run: $(grep VmHWM /proc/$pid/status | awk '{print int($2/1024)}') MB"
  stop
  start "$1" "${2:-$STORE}"
  ms=$(grep "graph rebuilt" $log.start | grep -o 'elapsed_ms=[0-9]*' | cut -d= -f2)
  echo "  restart${2:+ of $2}: graph rebuilt in ${ms} ms; store $(du -sm "${2:-$STORE}" | cut -f1) MB on disk"
}
trap 'kill $pid 2>/dev/null || true' EXIT
for bin in ${KG_BINS:-target/release/souk-kg}; do
  echo "== $bin"
  rm -rf "$STORE"
  start "$bin"
  /usr/bin/time -f "  load 5M: %e s" $C kg load "$TRIPLES" --quiet
  restart "$bin"
  for round in $(seq "${ROUNDS:-2}"); do
    /usr/bin/time -f "  round $round: delete 700k %e s" $C kg delete "$DEL" --quiet > /dev/null
    /usr/bin/time -f "  round $round: load back 700k %e s" $C kg load "$DEL" --quiet > /dev/null
    compactions
    restart "$bin"
  done
  if [ "${COMPACT:-1}" = 1 ]; then
    stop
    rm -rf "$STORE.compact"
    /usr/bin/time -f "  compact: %e s, peak RSS %M KB" "$bin" --data-dir "$STORE" --compact-into "$STORE.compact" 2>&1 |
      grep -v INFO
    echo "  on disk: churned $(du -sm "$STORE" | cut -f1) MB, compacted $(du -sm "$STORE.compact" | cut -f1) MB"
    start "$bin"
    for _ in 1 2 3; do restart "$bin" "$STORE.compact"; restart "$bin" "$STORE"; done
  fi
  stop
done
