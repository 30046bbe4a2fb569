#!/usr/bin/env bash
# Update feeds on a 10k-item shop (BENCHMARKS.md, "Session 46: removing triples"): loads the
# shop into a fresh store with `souk up`, then ROUNDS times in turn: `catalog update` of every
# item's price and stock (no graph fact changes), then two feeds that give every item with a
# colour a new one (each removes the old colour from the knowledge graph).
# usage: scripts/bench/feed-update.sh    env: SHOP=/tmp/shop10k STORE=/tmp/feedstore ROUNDS=3
#   BIN=target/release; SCALE=32 USERS=1000 (the shop generated when SHOP has none)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOP=${SHOP:-/tmp/shop10k}
STORE=${STORE:-/tmp/feedstore}
bin=${BIN:-target/release}
[ -x $bin/souk ] && [ -x $bin/soukctl ] || cargo build --release -p souk -p soukctl
[ -f "$SHOP/products.csv" ] ||
  python3 scripts/gen_demo_data.py --scale "${SCALE:-32}" --users "${USERS:-1000}" --out "$SHOP"
python3 - "$SHOP/products.csv" "$STORE.feeds" <<'PY'
import csv, os, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
os.makedirs(sys.argv[2], exist_ok=True)
with open(os.path.join(sys.argv[2], "prices.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "price", "in_stock"])
    for r in rows:
        w.writerow([r["id"], f"{float(r['price']) * 0.8:.2f}", r["in_stock"]])
for name, color in [("colors-a", "teal"), ("colors-b", "olive")]:
    with open(os.path.join(sys.argv[2], name + ".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "attributes"])
        for r in rows:
            if "color=" in r["attributes"]:
                w.writerow([r["id"], f"color={color}"])
PY
rm -rf "$STORE"
$bin/souk up --data-dir "$STORE" > /tmp/feed-update-up.log 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
for _ in $(seq 60); do $bin/soukctl health > /dev/null 2>&1 && break; sleep 1; done
$bin/soukctl kg load "$SHOP/triples.tsv" --quiet
/usr/bin/time -f "first load %e s" $bin/soukctl catalog load "$SHOP/products.csv" --quiet
for _ in $(seq "${ROUNDS:-3}"); do
  for feed in prices colors-a colors-b; do
    $bin/soukctl catalog update "$STORE.feeds/$feed.csv" --quiet
  done
done
