#!/usr/bin/env bash
# How much of an exact scan's top 10 the HNSW candidate pool gives, through the real suite
# (real model, real store): the same queries ranked by a suite with the graph (default
# threshold) and by one that scans every item (SOUK_ANN_MIN_ITEMS past the catalog), top 10s
# compared. BENCHMARKS.md, "Pending".
# usage: scripts/bench/pool-agreement.sh STORE CATALOG_CSV [QUERIES]   env: BIN=target/release
#   KEEP=DIR (keep each raw response there)  GRAPH_MIN=5000 (the first suite's threshold; past the catalog: exact against exact, the noise floor)
#   FILTERS=1: each query also carries a filter, as a shop's facet would: a category (a level of
#   the query's own row's path, or of a random row's) or a brand, or both; printed per query.
#   FILTERS=2: a price cap instead (a random row's price, so any share of the catalog passes),
#   half of them in stock only.
#   FILTERS=3: an attribute filter instead (a name of the query's own row or of a random row,
#   with that row's value and, half the time, another row's value of the same name), a third
#   of them in stock only.
set -euo pipefail
cd "$(dirname "$0")/../.."
store=$1 catalog=$2 n=${3:-200}
bin=${BIN:-target/release}
work=${KEEP:-$(mktemp -d)}
mkdir -p "$work"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
# Queries as `soukctl bench rank` draws them: 1-3 consecutive words of a catalog title.
# One query per line, fields split by \x1f (bash's read merges runs of tabs, so empty fields
# would shift): the query, a category, a brand, a price cap, "stock", an attribute filter
# "name=value[,value]" (all but the query empty unless FILTERS is set).
python3 - "$catalog" "$n" "${FILTERS:-0}" > "$work/queries" <<'PY'
import csv, random, sys
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
rng = random.Random(7)
def attributes(row):
    pairs = [kv.split("=", 1) for kv in row["attributes"].split(";") if "=" in kv]
    return [(k.strip(), v.strip()) for k, v in pairs if k.strip() and v.strip()]
values = {}
for r in rows:
    for k, v in attributes(r):
        values.setdefault(k, set()).add(v)
values = {k: sorted(vs) for k, vs in values.items()}
for _ in range(int(sys.argv[2])):
    row = rng.choice(rows)
    words = row["title"].split()
    size = rng.randint(1, min(3, len(words)))
    start = rng.randint(0, len(words) - size)
    category = brand = cap = stock = attr = ""
    if sys.argv[3] == "2":
        cap = rng.choice(rows)["price"]
        stock = "stock" if rng.random() < 0.5 else ""
    if sys.argv[3] == "1":
        facet = row if rng.random() < 0.5 else rng.choice(rows)
        kind = rng.choice(["category", "brand", "both"])
        if kind != "brand":
            category = rng.choice([p.strip() for p in facet["category"].split(">") if p.strip()])
        if kind != "category":
            brand = facet["brand"]
    if sys.argv[3] == "3":
        facet = row if rng.random() < 0.5 else rng.choice(rows)
        while not attributes(facet):
            facet = rng.choice(rows)
        name, value = rng.choice(attributes(facet))
        wanted = [value]
        if rng.random() < 0.5:
            wanted.append(rng.choice(values[name]))
        attr = name + "=" + ",".join(sorted(set(wanted)))
        stock = "stock" if rng.random() < 1 / 3 else ""
    print("\x1f".join([" ".join(words[start:start + size]), category, brand, cap, stock, attr]))
PY
run() {
  local label=$1 min=$2 i=0
  mkdir -p "$work/$label"
  SOUK_ANN_MIN_ITEMS=$min $bin/souk up --data-dir "$store" > "$work/$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 1200); do $bin/soukctl health > /dev/null 2>&1 && break; sleep 0.1; done
  while IFS=$'\x1f' read -r q category brand cap stock attr; do
    i=$((i + 1))
    local flags=(--category "$category")
    [ -z "$brand" ] || flags+=(--brand "$brand")
    [ -z "$cap" ] || flags+=(--max-price "$cap")
    [ -z "$stock" ] || flags+=(--in-stock)
    [ -z "$attr" ] || flags+=(--attr "$attr")
    $bin/soukctl rank -q "$q" -k 10 "${flags[@]}" --raw > "$work/$label/$i"
    echo "## $q | $category | $brand | $cap | $stock | $attr"
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
