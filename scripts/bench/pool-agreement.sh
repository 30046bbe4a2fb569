#!/usr/bin/env bash
# How much of an exact scan's top 10 the HNSW candidate pool gives, through the real suite
# (real model, real store): the same queries ranked by a suite with the graph (default
# threshold) and by one that scans every item (SOUK_ANN_MIN_ITEMS past the catalog), top 10s
# compared. BENCHMARKS.md, "Pending".
# usage: scripts/bench/pool-agreement.sh STORE CATALOG_CSV [QUERIES]   env: BIN=target/release
#   KEEP=DIR (keep each raw response there)  GRAPH_MIN=5000 (the first suite's threshold; past the catalog: exact against exact, the noise floor)
set -euo pipefail
cd "$(dirname "$0")/../.."
store=$1 catalog=$2 n=${3:-200}
bin=${BIN:-target/release}
work=${KEEP:-$(mktemp -d)}
mkdir -p "$work"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
# Queries as `soukctl bench rank` draws them: 1-3 consecutive words of a catalog title.
python3 - "$catalog" "$n" > "$work/queries" <<'PY'
import csv, random, sys
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
rng = random.Random(7)
for _ in range(int(sys.argv[2])):
    words = rng.choice(rows)["title"].split()
    size = rng.randint(1, min(3, len(words)))
    start = rng.randint(0, len(words) - size)
    print(" ".join(words[start:start + size]))
PY
run() {
  local label=$1 min=$2 i=0
  mkdir -p "$work/$label"
  SOUK_ANN_MIN_ITEMS=$min $bin/souk up --data-dir "$store" > "$work/$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 1200); do $bin/soukctl health > /dev/null 2>&1 && break; sleep 0.1; done
  while read -r q; do
    i=$((i + 1))
    $bin/soukctl rank -q "$q" -k 10 --raw > "$work/$label/$i"
    echo "## $q"
    grep -E '^ {12}id: "' "$work/$label/$i" || true
  done < "$work/queries" > "$work/$label.out"
  kill -INT $pid; wait $pid || true
}
run graph "${GRAPH_MIN:-5000}"
run exact 1000000000000
python3 - "$work/graph.out" "$work/exact.out" <<'PY'
import sys
def read(path):
    out, cur = [], None
    for line in open(path):
        if line.startswith("## "):
            cur = []; out.append(cur)
        elif cur is not None:
            cur.append(line.strip())
    return out
g, e = read(sys.argv[1]), read(sys.argv[2])
hits = sum(len(set(a) & set(b)) for a, b in zip(g, e))
total = sum(len(b) for b in e)
same = sum(a == b for a, b in zip(g, e))
print(f"{len(e)} queries: {hits / max(total, 1):.1%} of the exact top 10s in the graph's; "
      f"{same} of {len(e)} lists identical")
PY
