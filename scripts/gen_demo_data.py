#!/usr/bin/env python3
"""Generates souk's demo shop in kg-data/: products.csv, triples.tsv, events.csv.

Everything is invented by this script (no third-party data) and seeded, so running it again
gives byte-identical files. Usage: python3 scripts/gen_demo_data.py [--out kg-data] [--seed 7]
[--scale 1] (--scale 30 writes a ~10k-item catalog and ~3k users for load tests).
"""
import argparse
import csv
import os
import random

# top category -> sub category -> leaf -> (nouns, price range, attribute choices)
TAXONOMY = {
    "Electronics": {
        "Audio": {
            "Headphones": (["Over-Ear Headphones", "Wireless Earbuds", "Noise-Cancelling Headphones", "Sport Earphones"], (25, 350),
                           {"color": ["black", "white", "navy"], "connectivity": ["bluetooth", "wired"]}),
            "Speakers": (["Bluetooth Speaker", "Bookshelf Speaker", "Smart Speaker", "Waterproof Speaker"], (30, 400),
                         {"color": ["black", "grey", "red"], "connectivity": ["bluetooth", "wifi"]}),
        },
        "Phones": {
            "Smartphones": (["Smartphone", "5G Phone", "Compact Phone", "Camera Phone"], (199, 1199),
                            {"color": ["black", "silver", "blue"], "storage": ["128GB", "256GB", "512GB"]}),
            "Phone Cases": (["Phone Case", "Rugged Case", "Leather Folio Case", "Clear Case"], (9, 49),
                            {"color": ["black", "clear", "brown"], "material": ["silicone", "leather", "polycarbonate"]}),
            "Chargers": (["Fast Charger", "Wireless Charging Pad", "Power Bank", "Car Charger"], (12, 79),
                         {"power": ["20W", "45W", "65W"], "color": ["white", "black"]}),
        },
        "Computers": {
            "Laptops": (["Ultrabook", "Gaming Laptop", "Business Laptop", "2-in-1 Laptop"], (499, 2499),
                        {"screen": ["13 inch", "14 inch", "16 inch"], "memory": ["8GB", "16GB", "32GB"]}),
            "Laptop Bags": (["Laptop Backpack", "Laptop Sleeve", "Messenger Bag", "Rolling Laptop Case"], (19, 129),
                            {"color": ["black", "grey", "olive"], "material": ["nylon", "canvas", "leather"]}),
        },
    },
    "Outdoor": {
        "Camping": {
            "Tents": (["2-Person Backpacking Tent", "Family Tent", "Ultralight Tent", "Four-Season Tent"], (89, 699),
                      {"capacity": ["1 person", "2 person", "4 person", "6 person"], "color": ["green", "orange", "grey"]}),
            "Sleeping Bags": (["Down Sleeping Bag", "Synthetic Sleeping Bag", "Summer Sleeping Bag", "Mummy Sleeping Bag"], (39, 399),
                              {"rating": ["-10C", "0C", "5C", "10C"], "fill": ["down", "synthetic"]}),
            "Camp Stoves": (["Camp Stove", "Backpacking Stove", "Two-Burner Stove", "Wood-Burning Stove"], (25, 199),
                            {"fuel": ["butane", "propane", "wood"], "weight": ["light", "standard"]}),
        },
        "Hiking": {
            "Hiking Boots": (["Hiking Boots", "Trail Shoes", "Waterproof Boots", "Mountaineering Boots"], (79, 329),
                             {"color": ["brown", "black", "grey"], "waterproof": ["yes", "no"]}),
            "Backpacks": (["Daypack", "Trekking Backpack", "Hydration Pack", "Travel Backpack"], (35, 279),
                          {"volume": ["20L", "35L", "50L", "65L"], "color": ["blue", "black", "red"]}),
        },
    },
    "Kitchen": {
        "Coffee": {
            "Coffee Makers": (["Espresso Machine", "Drip Coffee Maker", "French Press", "Pour-Over Set"], (25, 899),
                              {"color": ["black", "steel", "white"], "capacity": ["1 cup", "4 cups", "12 cups"]}),
            "Grinders": (["Burr Grinder", "Hand Grinder", "Blade Grinder", "Espresso Grinder"], (19, 349),
                         {"grind": ["burr", "blade"], "color": ["black", "steel"]}),
            "Coffee Beans": (["Espresso Roast Beans", "Single-Origin Beans", "Decaf Beans", "Breakfast Blend"], (9, 39),
                             {"roast": ["light", "medium", "dark"], "origin": ["Ethiopia", "Colombia", "Brazil", "blend"]}),
        },
        "Cookware": {
            "Pans": (["Cast Iron Skillet", "Nonstick Frying Pan", "Stainless Saute Pan", "Wok"], (19, 199),
                     {"material": ["cast iron", "stainless steel", "aluminium"], "size": ["20cm", "26cm", "30cm"]}),
            "Knives": (["Chef Knife", "Santoku Knife", "Knife Set", "Paring Knife"], (15, 299),
                       {"steel": ["german", "japanese"], "handle": ["wood", "composite"]}),
        },
    },
    "Sports": {
        "Running": {
            "Running Shoes": (["Road Running Shoes", "Trail Running Shoes", "Racing Flats", "Cushioned Trainers"], (59, 249),
                              {"color": ["red", "blue", "black", "white"], "drop": ["4mm", "8mm", "10mm"]}),
            "Running Apparel": (["Running Jacket", "Running Shorts", "Running Tights", "Technical Tee"], (19, 149),
                                {"color": ["black", "neon", "blue"], "size": ["S", "M", "L"]}),
        },
        "Fitness": {
            "Yoga Mats": (["Yoga Mat", "Travel Yoga Mat", "Cork Yoga Mat", "Thick Exercise Mat"], (15, 119),
                          {"thickness": ["3mm", "5mm", "8mm"], "material": ["rubber", "cork", "TPE"]}),
            "Dumbbells": (["Adjustable Dumbbells", "Hex Dumbbell Pair", "Kettlebell", "Neoprene Dumbbells"], (19, 399),
                          {"weight": ["5kg", "10kg", "24kg"], "material": ["iron", "neoprene"]}),
        },
    },
    "Home": {
        "Lighting": {
            "Desk Lamps": (["LED Desk Lamp", "Architect Lamp", "Clip-On Lamp", "Smart Desk Lamp"], (15, 189),
                           {"color": ["black", "white", "brass"], "bulb": ["LED", "E27"]}),
        },
        "Bedding": {
            "Pillows": (["Memory Foam Pillow", "Down Pillow", "Cooling Pillow", "Travel Pillow"], (15, 129),
                        {"fill": ["memory foam", "down", "fibre"], "firmness": ["soft", "medium", "firm"]}),
            "Duvets": (["All-Season Duvet", "Summer Duvet", "Winter Duvet", "Wool Duvet"], (39, 399),
                       {"size": ["single", "double", "king"], "fill": ["down", "wool", "fibre"]}),
        },
    },
}

BRANDS = {
    "Electronics": ["Voltix", "Auralis", "Pixelon", "Kestrel", "Nimbus"],
    "Outdoor": ["Northpeak", "Trailhound", "Summitry", "Pinecrest"],
    "Kitchen": ["Brewcraft", "Ironleaf", "Santoro", "Cuppa & Co"],
    "Sports": ["Stride", "Flexion", "Pacemark", "Corefit"],
    "Home": ["Lumen House", "Softnest", "Hearthly"],
}
ADJECTIVES = ["Pro", "Lite", "Air", "Max", "Classic", "Edge", "Flow", "Prime", "Terra", "Nova", "Zen", "Peak"]

# leaf -> (relation, leaf it points to): hand-written knowledge about what goes with what
ACCESSORY = {"Phone Cases": "Smartphones", "Chargers": "Smartphones", "Laptop Bags": "Laptops"}
COMPLEMENTS = [("Grinders", "Coffee Makers"), ("Coffee Beans", "Coffee Makers"), ("Sleeping Bags", "Tents"),
               ("Camp Stoves", "Tents"), ("Backpacks", "Hiking Boots"), ("Running Apparel", "Running Shoes"),
               ("Yoga Mats", "Dumbbells"), ("Pillows", "Duvets"), ("Knives", "Pans"), ("Speakers", "Smartphones")]


def leaves():
    for top, subs in TAXONOMY.items():
        for sub, leafs in subs.items():
            for leaf, spec in leafs.items():
                yield top, sub, leaf, spec


def make_products(rng, scale):
    products = []
    n = 0
    for top, sub, leaf, (nouns, (lo, hi), attrs) in leaves():
        for _ in range(13 * scale):
            n += 1
            brand = rng.choice(BRANDS[top])
            noun = rng.choice(nouns)
            adjective = rng.choice(ADJECTIVES)
            model = rng.randint(1, 9) * 100 + rng.choice([0, 10, 20, 50])
            chosen = {k: rng.choice(v) for k, v in sorted(attrs.items())}
            price = round(rng.uniform(lo, hi), 2)
            title = f"{brand} {adjective} {noun} {model}"
            detail = ", ".join(f"{k} {v}" for k, v in chosen.items())
            description = (f"The {adjective} {noun.lower()} from {brand}: {detail}. "
                           f"{rng.choice(['Built to last', 'Designed for everyday use', 'Loved by reviewers', 'Our best value pick', 'Made for enthusiasts'])} "
                           f"in {leaf.lower()}.")
            products.append({
                "id": f"p{n:05d}",
                "title": title,
                "description": description,
                "category": f"{top} > {sub} > {leaf}",
                "brand": brand,
                "price": f"{price:.2f}",
                "attributes": "; ".join(f"{k}={v}" for k, v in chosen.items()),
                "in_stock": "false" if rng.random() < 0.06 else "true",
                "_leaf": leaf,
                "_top": top,
            })
    return products


def category_entity(parts):
    return "category:" + "/".join(parts)


def make_triples(rng, products):
    triples = []
    seen = set()

    def add(h, r, t):
        if (h, r, t) not in seen:
            seen.add((h, r, t))
            triples.append((h, r, t))

    by_leaf = {}
    for p in products:
        by_leaf.setdefault(p["_leaf"], []).append(p)
        item = f"item:{p['id']}"
        parts = [c.strip() for c in p["category"].split(">")]
        for i in range(1, len(parts)):
            add(category_entity(parts[: i + 1]), "parent", category_entity(parts[:i]))
        add(item, "brand", f"brand:{p['brand']}")
        add(item, "category", category_entity(parts))
        for kv in p["attributes"].split("; "):
            add(item, "attribute", f"attr:{kv}")
    # accessories: each accessory fits 2 devices, preferring the same brand
    for acc_leaf, device_leaf in ACCESSORY.items():
        devices = by_leaf[device_leaf]
        for p in by_leaf[acc_leaf]:
            same = [d for d in devices if d["brand"] == p["brand"]] or devices
            for d in rng.sample(same, min(2, len(same))):
                add(f"item:{p['id']}", "accessory_of", f"item:{d['id']}")
    for a_leaf, b_leaf in COMPLEMENTS:
        bs = by_leaf[b_leaf]
        for p in by_leaf[a_leaf]:
            for d in rng.sample(bs, min(2, len(bs))):
                add(f"item:{p['id']}", "complements", f"item:{d['id']}")
    return triples


def make_events(rng, products, triples, users):
    by_leaf = {}
    for p in products:
        by_leaf.setdefault(p["_leaf"], []).append(p)
    leaf_names = sorted(by_leaf)
    related = {}
    for h, r, t in triples:
        if r in ("accessory_of", "complements"):
            related.setdefault(t[5:], []).append(h[5:])
            related.setdefault(h[5:], []).append(t[5:])
    by_id = {p["id"]: p for p in products}
    events = []
    t0 = 1788220800000  # 2026-09-01T00:00:00Z
    for u in range(1, users + 1):
        user = f"u{u:03d}" if users < 1000 else f"u{u:05d}"
        tastes = rng.sample(leaf_names, rng.choice([1, 2, 2, 3]))
        favourite_brand = rng.choice(BRANDS[by_leaf[tastes[0]][0]["_top"]])
        t = t0 + rng.randint(0, 20 * 86400) * 1000
        for _ in range(rng.randint(8, 30)):
            t += rng.randint(30, 7200) * 1000
            if rng.random() < 0.85:
                pool = by_leaf[rng.choice(tastes)]
                branded = [p for p in pool if p["brand"] == favourite_brand]
                item = rng.choice(branded) if branded and rng.random() < 0.6 else rng.choice(pool)
            else:
                item = rng.choice(products)
            events.append((user, item["id"], "view", 1, t))
            r = rng.random()
            if r < 0.45:
                t += rng.randint(5, 300) * 1000
                events.append((user, item["id"], "click", 1, t))
            if r < 0.18:
                t += rng.randint(5, 600) * 1000
                events.append((user, item["id"], "cart", 1, t))
            if r < 0.12:
                t += rng.randint(5, 600) * 1000
                events.append((user, item["id"], "purchase", 1, t))
                for other in rng.sample(related.get(item["id"], []), min(1, len(related.get(item["id"], [])))):
                    if rng.random() < 0.5 and other in by_id:
                        t += rng.randint(60, 3600) * 1000
                        events.append((user, other, "view", 1, t))
                        if rng.random() < 0.4:
                            t += rng.randint(60, 3600) * 1000
                            events.append((user, other, "purchase", 1, t))
    events.sort(key=lambda e: (e[4], e[0]))
    return events


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "kg-data"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--users", type=int, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    users = args.users or 100 * args.scale
    products = make_products(rng, args.scale)
    triples = make_triples(rng, products)
    events = make_events(rng, products, triples, users)
    os.makedirs(args.out, exist_ok=True)
    cols = ["id", "title", "description", "category", "brand", "price", "attributes", "in_stock"]
    with open(os.path.join(args.out, "products.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for p in products:
            w.writerow([p[c] for c in cols])
    with open(os.path.join(args.out, "triples.tsv"), "w") as f:
        for h, r, t in triples:
            f.write(f"{h}\t{r}\t{t}\n")
    with open(os.path.join(args.out, "events.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", "item_id", "kind", "value", "timestamp_ms"])
        w.writerows(events)
    print(f"{len(products)} products, {len(triples)} triples, {len(events)} events for {users} users -> {args.out}")


if __name__ == "__main__":
    main()
