#!/usr/bin/env python3
"""A large shop-shaped graph for load benchmarks: N triples over items, brands, a category tree
and attributes (5 triples per item; hubs like a category with ~100k items included).

    python3 scripts/bench/gen_triples.py 5000000 > /tmp/kg-5m.tsv
"""
import random
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000
rng = random.Random(42)
out = sys.stdout
brands = [f"brand:b{i:05d}" for i in range(20_000)]
categories = [f"category:c{i // 100}/{i % 100}" for i in range(5_000)]
colors = ["black", "white", "red", "navy", "green", "grey", "blue", "pink", "beige", "brown"]
written = 0
item = 0
lines = []
while written < n:
    name = f"item:i{item:08d}"
    item += 1
    rows = [
        (name, "brand", brands[int(rng.paretovariate(1.2)) % len(brands)]),
        (name, "category", categories[int(rng.paretovariate(0.8)) % len(categories)]),
        (name, "attribute", f"attr:color={rng.choice(colors)}"),
        (name, "attribute", f"attr:size={rng.randint(1, 60)}"),
        (name, "complements", f"item:i{rng.randrange(max(item, 1)):08d}"),
    ]
    take = rows[: n - written]
    for h, r, t in take:
        lines.append(f"{h}\t{r}\t{t}\n")
    written += len(take)
    if len(lines) >= 100_000:
        out.write("".join(lines))
        lines.clear()
out.write("".join(lines))
