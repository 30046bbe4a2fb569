#!/usr/bin/env python3
"""Writes 2,000 product-title-like texts (5-20 words), seeded, one per line, for encoder
benchmarks: python3 scripts/gen_bench_texts.py > /tmp/titles.txt"""
import random
import sys

rng = random.Random(11)
brands = ["Voltix", "Auralis", "Northpeak", "Trailhound", "Brewcraft", "Ironleaf", "Stride", "Flexion", "Softnest", "Lumen House"]
adjectives = ["lightweight", "waterproof", "wireless", "stainless", "ergonomic", "compact", "premium", "durable", "organic", "adjustable", "noise-cancelling", "breathable", "foldable", "rechargeable"]
nouns = ["running shoes", "hiking boots", "coffee grinder", "espresso machine", "bluetooth speaker", "laptop backpack", "yoga mat", "chef knife", "sleeping bag", "desk lamp", "phone case", "power bank", "cast iron skillet", "down pillow", "trail jacket", "smart watch"]
extras = ["for women", "for men", "with carry case", "2-pack", "in black", "large size", "with USB-C charging", "for travel", "gift set", "for beginners", "professional grade", "with lifetime warranty", "eco friendly materials", "extra long battery life", "fits most models"]
out = []
while len(out) < 2000:
    words = [rng.choice(brands)] + rng.sample(adjectives, rng.randint(1, 3)) + [rng.choice(nouns)]
    for extra in rng.sample(extras, rng.randint(0, 4)):
        words.append(extra)
    text = " ".join(words).split()
    if 5 <= len(text) <= 20:
        out.append(" ".join(text))
sys.stdout.write("\n".join(out) + "\n")
