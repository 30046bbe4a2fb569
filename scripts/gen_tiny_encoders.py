#!/usr/bin/env python3
"""Writes tiny, randomly initialised sentence encoders and the vectors sentence-transformers
gives for a set of texts: the fixtures that hold souk's encoder to model families and
sentence-transformers modules no real model of which can be fetched here. Each is checked
against transformers' and sentence-transformers' own implementations.

Needs torch, transformers, sentence-transformers and tokenizers: run it from a throwaway venv,
never as a test dependency:

    python3 -m venv /tmp/stv && /tmp/stv/bin/pip install torch transformers sentence-transformers
    /tmp/stv/bin/python scripts/gen_tiny_encoders.py services/encoder/candle/tests/data [NAME...]

NAME (default: all):
- `tiny-xlm-roberta`: XLM-RoBERTa (positions after the padding id), a Unigram tokenizer with
  XLM-R's `<s> ... </s>` template, mean pooling, e5's prompts ("query: ", "passage: ") in
  `config_sentence_transformers.json`; max_position_embeddings 66 and no
  `sentence_bert_config.json`: the encoder must find the 64-token limit from the position
  table itself. The reference has each text's vector with no prompt and with each prompt.
- `tiny-bert-dense`: BERT with a WordPiece tokenizer, CLS pooling, a dense layer (32 -> 16,
  tanh) and Normalize, as LaBSE is built, saved by sentence-transformers 6 itself (its
  `"pooling_mode": "cls"` and the 48-token limit in `tokenizer_config.json`, not in
  `sentence_bert_config.json`).
- `tiny-distilbert`: DistilBERT (BERT's layers under other names, no token types), mean
  pooling, saved by sentence-transformers 6.
- `tiny-mpnet`: MPNet (RoBERTa's position numbering, a relative position bias in attention,
  other names), mean pooling, saved by sentence-transformers 6; a 66-row table, texts up to
  64 pieces, so distances reach the logarithmic buckets.

- `tiny-bert-pooling`: BERT saved with max pooling; the reference has each text's vector
  under every pooling mode sentence-transformers has (`item["modes"]`), for a test that
  rewrites the pooling config per mode.

- `tiny-modernbert`: ModernBERT (rotary positions with one base for global layers and
  another for local ones, a 4-token local window, gated GELU, pre-norm, no biases), mean
  pooling, saved by sentence-transformers 6.

Weights are seeded, but the tokenizer trainers' scores can differ in their last digits between
runs (and so tokenize a text otherwise): commit the files of one run together.
"""
import json
import os
import shutil
import sys
import tempfile

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer, models
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram, WordPiece
from tokenizers.trainers import UnigramTrainer, WordPieceTrainer
from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    ModernBertConfig,
    ModernBertModel,
    MPNetConfig,
    MPNetModel,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaModel,
)

CORPUS = [
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

TEXTS = [
    "",
    "hiking boots",
    "lightweight waterproof hiking boots for women",
    "咖啡研磨机",
    "chaussures de randonnée 🥾",
    "  tabs\tand\nnewlines  ",
    # A literal special token: transformers numbers a padding id in the text at `pad`.
    "espresso <pad> machine",
    # Far over the limit: truncated, the last position row used.
    " ".join(CORPUS[:12]),
]


# The BERT-layer fixtures' sizes (XLM-RoBERTa, BERT, MPNet): 32 wide, 2 layers of 2 heads.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def widen(model):
    """transformers initialises embeddings with std 0.02 and layer norms to the identity;
    wider weights make every position row, and so a wrong numbering, visible in the vectors."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.normal_(0.0, 0.5)
            elif "LayerNorm.weight" in name or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
    model.eval()
    return model


def write_reference(out, name, max_seq_length, items):
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(
            {
                "model": f"{name} (scripts/gen_tiny_encoders.py)",
                "produced_with": f"sentence-transformers {sentence_transformers.__version__}, "
                f"transformers {transformers.__version__}, torch {torch.__version__}, CPU, fp32",
                "max_seq_length": max_seq_length,
                "items": items,
            },
            f,
            indent=1,
            ensure_ascii=False,
        )
    print(f"wrote {out}: {len(items)} reference texts")


def roberta_style(tok, unk, mask):
    """`<s> $A </s>` around a trained tokenizer whose first ids are <s>, <pad>, </s>, and its
    fast wrapper: the generic class, which runs tokenizer.json as written (a model's own
    class, XLMRobertaTokenizer, would rebuild its own pipeline), so the reference and souk
    tokenize alike."""
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token=unk,
        pad_token="<pad>",
        mask_token=mask,
    )


def bert_pipeline(special):
    """A WordPiece tokenizer with BERT's normalizer and pre-tokenizer, trained on the corpus,
    its `special` tokens first."""
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, WordPieceTrainer(vocab_size=300, special_tokens=special))
    assert [tok.token_to_id(t) for t in special] == list(range(len(special)))
    return tok


def xlm_roberta(out):
    os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
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
        CORPUS, UnigramTrainer(vocab_size=300, special_tokens=special, unk_token="<unk>")
    )
    assert [tok.token_to_id(t) for t in special] == [0, 1, 2, 3]
    fast = roberta_style(tok, "<unk>", "<unk>")
    fast.save_pretrained(out)
    torch.manual_seed(20261208)
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        **TINY,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = widen(XLMRobertaModel(config, add_pooling_layer=False))
    model.save_pretrained(out, safe_serialization=True)
    path = os.path.join(out, "generation_config.json")
    if os.path.exists(path):
        os.remove(path)
    with open(os.path.join(out, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, f, indent=2)
    # e5's prompts: queries and passages are embedded with different prefixes.
    prompts = {"query": "query: ", "passage": "passage: "}
    with open(os.path.join(out, "config_sentence_transformers.json"), "w") as f:
        json.dump({"prompts": prompts, "default_prompt_name": None}, f, indent=2)

    transformer = models.Transformer(out, max_seq_length=64)
    pooling = models.Pooling(32, pooling_mode="mean")
    st = SentenceTransformer(modules=[transformer, pooling], device="cpu", prompts=prompts)

    def embedded(prompt_name):
        prompt = prompts.get(prompt_name, "")
        vectors = st.encode(
            TEXTS, prompt_name=prompt_name, normalize_embeddings=True, convert_to_numpy=True
        )
        return [
            {
                "tokens": len(fast(prompt + text, truncation=True, max_length=64)["input_ids"]),
                "embedding": [float(v) for v in vector],
            }
            for text, vector in zip(TEXTS, vectors)
        ]

    items = []
    # "embedding": no prompt (`encode`, the default prompt being none); "query" and "document":
    # with e5's prompts (`encode(prompt_name="query")`, `encode(prompt_name="passage")`).
    for text, plain, query, document in zip(
        TEXTS, embedded(None), embedded("query"), embedded("passage")
    ):
        items.append({"text": text, **plain, "query": query, "document": document})
    write_reference(out, "tiny random XLM-RoBERTa", 64, items)


def wordpiece():
    """A WordPiece tokenizer with BERT's pipeline, trained on the corpus, and its fast wrapper."""
    tok = bert_pipeline(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    return tok, fast


def sentence_transformers_dir(out, model, fast, modules, max_seq_length):
    """Saves `model` with `fast` through sentence-transformers 6 (the Transformer module first,
    then `modules`) into `out`, and reads it back as a user's copy would be read."""
    with tempfile.TemporaryDirectory() as staged:
        fast.save_pretrained(staged)
        model.save_pretrained(staged, safe_serialization=True)
        st = SentenceTransformer(
            modules=[models.Transformer(staged, max_seq_length=max_seq_length)] + modules,
            device="cpu",
        )
        if os.path.exists(out):
            shutil.rmtree(out)
        st.save(out)
    for junk in ["README.md", "generation_config.json"]:
        path = os.path.join(out, junk)
        if os.path.exists(path):
            os.remove(path)
    st = SentenceTransformer(out, device="cpu")
    assert st.max_seq_length == max_seq_length, st.max_seq_length
    vectors = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    return [
        {
            "text": text,
            "tokens": len(fast(text, truncation=True, max_length=max_seq_length)["input_ids"]),
            "embedding": [float(v) for v in vector],
        }
        for text, vector in zip(TEXTS, vectors)
    ]


def tiny_bert(seed):
    """A WordPiece tokenizer and a widened 2-layer BERT, 32 wide, its weights from `seed`."""
    tok, fast = wordpiece()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        **TINY,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return fast, widen(BertModel(config, add_pooling_layer=False))


def bert_dense(out):
    fast, model = tiny_bert(20261209)
    # LaBSE's layout: CLS, a dense layer with tanh, Normalize.
    items = sentence_transformers_dir(
        out,
        model,
        fast,
        [
            models.Pooling(32, pooling_mode="cls"),
            models.Dense(32, 16, activation_function=torch.nn.Tanh()),
            models.Normalize(),
        ],
        48,
    )
    write_reference(out, "tiny random BERT, CLS pooling, dense layer", 48, items)


def distilbert(out):
    _, fast = wordpiece()
    torch.manual_seed(20261210)
    config = DistilBertConfig(
        vocab_size=fast.vocab_size,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    model = widen(DistilBertModel(config))
    items = sentence_transformers_dir(
        out, model, fast, [models.Pooling(32, pooling_mode="mean"), models.Normalize()], 64
    )
    write_reference(out, "tiny random DistilBERT, mean pooling", 64, items)


def mpnet(out):
    # MPNet's tokenizer: WordPiece with <s> ... </s> and <pad> at 1 (positions are numbered
    # after it, as RoBERTa's are).
    tok = bert_pipeline(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"])
    fast = roberta_style(tok, "[UNK]", "<mask>")
    torch.manual_seed(20261211)
    config = MPNetConfig(
        vocab_size=tok.get_vocab_size(),
        **TINY,
        max_position_embeddings=66,
        relative_attention_num_buckets=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = widen(MPNetModel(config, add_pooling_layer=False))
    # all-mpnet-base-v2's layout: mean pooling, Normalize.
    items = sentence_transformers_dir(
        out, model, fast, [models.Pooling(32, pooling_mode="mean"), models.Normalize()], 64
    )
    write_reference(out, "tiny random MPNet, mean pooling", 64, items)


POOLING_MODES = ["max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", "mean", "cls"]


def bert_pooling(out):
    """BERT saved with max pooling, and each text's vector under every pooling mode
    (`item["modes"][mode]`): the test rewrites `1_Pooling/config.json` per mode."""
    fast, model = tiny_bert(20261212)
    items = sentence_transformers_dir(
        out, model, fast, [models.Pooling(32, pooling_mode="max"), models.Normalize()], 64
    )
    for mode in POOLING_MODES:
        st = SentenceTransformer(
            modules=[
                models.Transformer(out, max_seq_length=64),
                models.Pooling(32, pooling_mode=mode),
            ],
            device="cpu",
        )
        vectors = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
        for item, vector in zip(items, vectors):
            item.setdefault("modes", {})[mode] = [float(v) for v in vector]
    for item in items:
        off = max(abs(a - b) for a, b in zip(item["modes"]["max"], item["embedding"]))
        assert off < 1e-6, f"the saved directory pools by max ({off})"
    write_reference(out, "tiny random BERT, every pooling mode", 64, items)


def modernbert(out):
    """ModernBERT with a local window of 4 tokens each side (`local_attention` 8) so that texts
    of up to 64 pieces cross it; layers 0 and 3 global, 1 and 2 local; distinct rotary bases;
    gated GELU; no biases; mean pooling."""
    tok, fast = wordpiece()
    torch.manual_seed(20261213)
    config = ModernBertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        local_attention=8,
        global_attn_every_n_layers=3,
        global_rope_theta=160000.0,
        local_rope_theta=10000.0,
        pad_token_id=0,
        cls_token_id=2,
        sep_token_id=3,
        bos_token_id=2,
        eos_token_id=3,
        attn_implementation="eager",
    )
    assert config.layer_types == [
        "full_attention", "sliding_attention", "sliding_attention", "full_attention"
    ], config.layer_types
    model = widen(ModernBertModel(config))
    items = sentence_transformers_dir(
        out, model, fast, [models.Pooling(32, pooling_mode="mean"), models.Normalize()], 64
    )
    write_reference(out, "tiny random ModernBERT, mean pooling", 64, items)


MAKERS = {
    "tiny-xlm-roberta": xlm_roberta,
    "tiny-bert-dense": bert_dense,
    "tiny-distilbert": distilbert,
    "tiny-mpnet": mpnet,
    "tiny-bert-pooling": bert_pooling,
    "tiny-modernbert": modernbert,
}

if __name__ == "__main__":
    parent = sys.argv[1] if len(sys.argv) > 1 else "."
    for name in sys.argv[2:] or list(MAKERS):
        MAKERS[name](os.path.join(parent, name))
