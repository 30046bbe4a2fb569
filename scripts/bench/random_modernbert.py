#!/usr/bin/env python3
"""Writes a ModernBERT with ModernBERT-base's shapes (768 wide, 22 layers, 12 heads, 1152 MLP,
a 128-token local window) and random weights, with MiniLM's WordPiece tokenizer, as a
sentence-transformers directory (mean pooling): a speed stand-in for gte-modernbert-base,
which cannot be fetched here. Throughput depends on the shapes, not the weights' values.

    /tmp/stv/bin/python scripts/bench/random_modernbert.py models/all-MiniLM-L6-v2 /tmp/modernbert-base
    MODEL_DIR=/tmp/modernbert-base BENCH_VENV=/tmp/stv scripts/bench/encoder-ab.sh \\
        target/release/souk-encoder-bench target/release/souk-encoder-bench 32
"""
import os
import shutil
import sys

import torch
from sentence_transformers import SentenceTransformer, models
from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

minilm, out = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(minilm)
torch.manual_seed(0)
config = ModernBertConfig(
    vocab_size=tokenizer.vocab_size,
    hidden_size=768,
    num_hidden_layers=22,
    num_attention_heads=12,
    intermediate_size=1152,
    max_position_embeddings=8192,
    local_attention=128,
    global_attn_every_n_layers=3,
    pad_token_id=tokenizer.pad_token_id,
    cls_token_id=tokenizer.cls_token_id,
    sep_token_id=tokenizer.sep_token_id,
    bos_token_id=tokenizer.cls_token_id,
    eos_token_id=tokenizer.sep_token_id,
)
model = ModernBertModel(config).eval()
staged = out + ".staged"
shutil.rmtree(staged, ignore_errors=True)
tokenizer.save_pretrained(staged)
model.save_pretrained(staged, safe_serialization=True)
st = SentenceTransformer(
    modules=[models.Transformer(staged, max_seq_length=256), models.Pooling(768, "mean")],
    device="cpu",
)
shutil.rmtree(out, ignore_errors=True)
st.save(out)
shutil.rmtree(staged)
print(f"wrote {out}")
