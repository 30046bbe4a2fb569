#!/usr/bin/env python3
"""Writes a tiny, randomly initialised XLM-RoBERTa sentence encoder and the vectors
sentence-transformers gives for a set of texts: the fixture that holds souk's encoder to
RoBERTa's position numbering (no RoBERTa-family model can be fetched here, so the family is
checked on a model of its exact architecture, against transformers' own implementation).

Needs torch, transformers, sentence-transformers and tokenizers: run it from a throwaway venv,
never as a test dependency:

    python3 -m venv /tmp/stv && /tmp/stv/bin/pip install torch transformers sentence-transformers
    /tmp/stv/bin/python scripts/gen_tiny_xlmr.py services/encoder/candle/tests/data/tiny-xlm-roberta

The directory gets `config.json` (max_position_embeddings 66: 64 tokens after the 2 reserved
rows), `model.safetensors`, `tokenizer.json` (a Unigram model trained here, with XLM-R's
`<s> ... </s>` template), `1_Pooling/config.json` (mean), and `reference.json`: per text its
token count and its L2-normalised vector. No `sentence_bert_config.json`: the encoder must find
the 64-token limit from the position table itself. `config_sentence_transformers.json` holds
e5's prompts ("query: ", "passage: "), and the reference has each text's vector with each.
The weights are seeded, but the Unigram trainer's scores can differ in their last digits between
runs (and so tokenize a text otherwise): commit the files of one run together.
"""
import json
import os
import sys

import torch
from sentence_transformers import SentenceTransformer, models
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from tokenizers.trainers import UnigramTrainer
from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

out = sys.argv[1] if len(sys.argv) > 1 else "tiny-xlm-roberta"
os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)

corpus = [
    "lightweight waterproof hiking boots for women",
    "wireless noise-cancelling over-ear headphones",
    "stainless steel espresso machine with milk frother",
    "bolsa de dormir ligera para acampar",
    "chaussures de randonnée imperméables",
    "wasserdichte Wanderschuhe für Damen",
    "咖啡研磨机 不锈钢",
    "cast iron skillet pre-seasoned 12 inch",
    "organic single-origin coffee beans, medium roast",
    "rechargeable desk lamp with USB-C charging",
] * 20
special = ["<s>", "<pad>", "</s>", "<unk>"]
tok = Tokenizer(Unigram())
tok.normalizer = normalizers.NFKC()
# What transformers 5 builds for XLM-R (whitespace split, then the word-start marker); the
# real model's file adds a precompiled NFKC charsmap that cannot be made here.
tok.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()]
)
tok.decoder = decoders.Metaspace()
tok.train_from_iterator(
    corpus,
    UnigramTrainer(vocab_size=300, special_tokens=special, unk_token="<unk>"),
)
assert [tok.token_to_id(t) for t in special] == [0, 1, 2, 3]
tok.post_processor = processors.TemplateProcessing(
    single="<s> $A </s>",
    pair="<s> $A </s> </s> $B </s>",
    special_tokens=[("<s>", 0), ("</s>", 2)],
)
# The generic class: it runs tokenizer.json as written (XLMRobertaTokenizer would rebuild
# its own pipeline), so the reference and souk tokenize alike.
fast = PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token="<s>",
    eos_token="</s>",
    sep_token="</s>",
    cls_token="<s>",
    unk_token="<unk>",
    pad_token="<pad>",
    mask_token="<unk>",
)
fast.save_pretrained(out)

torch.manual_seed(20261208)
config = XLMRobertaConfig(
    vocab_size=tok.get_vocab_size(),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=66,
    type_vocab_size=1,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
model = XLMRobertaModel(config, add_pooling_layer=False)
# transformers initialises embeddings with std 0.02 and layer norms to the identity; wider
# weights make every position row, and so a wrong numbering, visible in the vectors.
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() == 2:
            p.normal_(0.0, 0.5)
        elif "LayerNorm.weight" in name:
            p.uniform_(0.5, 1.5)
        else:
            p.normal_(0.0, 0.1)
model.eval()
model.save_pretrained(out, safe_serialization=True)
for junk in ["generation_config.json"]:
    path = os.path.join(out, junk)
    if os.path.exists(path):
        os.remove(path)
with open(os.path.join(out, "1_Pooling", "config.json"), "w") as f:
    json.dump({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, f, indent=2)
# e5's prompts: queries and passages are embedded with different prefixes.
prompts = {"query": "query: ", "passage": "passage: "}
with open(os.path.join(out, "config_sentence_transformers.json"), "w") as f:
    json.dump({"prompts": prompts, "default_prompt_name": None}, f, indent=2)

texts = [
    "",
    "hiking boots",
    "lightweight waterproof hiking boots for women",
    "咖啡研磨机",
    "chaussures de randonnée 🥾",
    "  tabs\tand\nnewlines  ",
    # A literal special token: transformers numbers a padding id in the text at `pad`.
    "espresso <pad> machine",
    # Far over 64 pieces: truncated to 64, the last position row used.
    " ".join(corpus[:12]),
]
transformer = models.Transformer(out, max_seq_length=64)
pooling = models.Pooling(32, pooling_mode="mean")
st = SentenceTransformer(modules=[transformer, pooling], device="cpu", prompts=prompts)


def embedded(prompt_name):
    prompt = prompts.get(prompt_name, "")
    vectors = st.encode(
        texts, prompt_name=prompt_name, normalize_embeddings=True, convert_to_numpy=True
    )
    return [
        {
            "tokens": len(fast(prompt + text, truncation=True, max_length=64)["input_ids"]),
            "embedding": [float(v) for v in vector],
        }
        for text, vector in zip(texts, vectors)
    ]


items = []
# "embedding": no prompt (`encode`, the default prompt being none); "query" and "document":
# with e5's prompts (`encode(prompt_name="query")`, `encode(prompt_name="passage")`).
for text, plain, query, document in zip(
    texts, embedded(None), embedded("query"), embedded("passage")
):
    items.append({"text": text, **plain, "query": query, "document": document})
import sentence_transformers
import transformers

with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(
        {
            "model": "tiny random XLM-RoBERTa (scripts/gen_tiny_xlmr.py)",
            "produced_with": f"sentence-transformers {sentence_transformers.__version__}, "
            f"transformers {transformers.__version__}, torch {torch.__version__}, CPU, fp32",
            "max_seq_length": 64,
            "items": items,
        },
        f,
        indent=1,
        ensure_ascii=False,
    )
print(f"wrote {out}: {config.vocab_size} pieces, {len(items)} reference texts")
