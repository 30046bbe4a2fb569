#!/usr/bin/env python3
"""The lowest cosine between souk's vectors (`souk-encoder-bench --model DIR reference TEXTS
OUT.json`) and sentence-transformers' for the same model directory and texts: a check of a
model family at full size, where the tiny test fixtures cannot say how errors add up.

    souk-encoder-bench --model DIR reference texts.txt /tmp/souk.json
    /tmp/stv/bin/python scripts/bench/agree_st.py DIR /tmp/souk.json
"""
import json
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

model_dir, souk_path = sys.argv[1], sys.argv[2]
souk = json.load(open(souk_path, encoding="utf-8"))
torch.set_num_threads(2)
model = SentenceTransformer(model_dir, device="cpu")
theirs = model.encode(souk["texts"], batch_size=32, convert_to_numpy=True)
ours = np.array(souk["vectors"], dtype=np.float64)
theirs = theirs.astype(np.float64)
cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
worst = int(cos.argmin())
print(f"texts={len(cos)} min_cosine={cos.min():.6f} mean_cosine={cos.mean():.6f} worst={souk['texts'][worst][:60]!r}")
