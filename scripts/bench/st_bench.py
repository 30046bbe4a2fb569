#!/usr/bin/env python3
"""sentence-transformers texts/s on a file of texts, one per line, at the given batch sizes, in
input order (what a caller sends), 2 torch threads. Used by scripts/bench/encoder-cpu.sh."""
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir, path = sys.argv[1], sys.argv[2]
batches = [int(b) for b in sys.argv[3].split(",")]
torch.set_num_threads(2)
texts = [l.rstrip("\n") for l in open(path, encoding="utf-8") if l.strip()]
model = SentenceTransformer(model_dir, device="cpu")
model.encode(texts[:64], batch_size=32)
for batch in batches:
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            model.encode(texts[i : i + batch], batch_size=batch, normalize_embeddings=True)
        rates.append(len(texts) / (time.perf_counter() - started))
    rates.sort()
    print(f"engine=sentence-transformers texts={len(texts)} batch={batch} texts_per_s={rates[1]:.1f} (median of 3)", flush=True)
