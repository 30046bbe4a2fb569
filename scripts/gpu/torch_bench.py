#!/usr/bin/env python3
"""PyTorch baseline for the encoder: transformers BertModel with the same config and weights,
mean pooling + L2 norm + copy to host (what souk's encoder returns), at fixed batch x seq
shapes with synthetic ids. Prints lines in the same format as `souk-encoder-bench shapes`.

    python3 torch_bench.py MODEL_DIR [--iters 20] [--shapes 128x32,512x128] [--dtypes f32,f16,bf16]
"""
import argparse
import time

import torch
from transformers import BertModel

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def load(model_dir, dtype, attn):
    extra = {"attn_implementation": attn} if attn else {}
    try:
        model = BertModel.from_pretrained(model_dir, dtype=dtype, add_pooling_layer=False, **extra)
    except TypeError:
        model = BertModel.from_pretrained(model_dir, torch_dtype=dtype, add_pooling_layer=False, **extra)
    return model.cuda().eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--shapes", default="128x32,512x128")
    ap.add_argument("--dtypes", default="f32,f16,bf16")
    ap.add_argument("--attn", default="", help="eager or sdpa; empty: transformers' default")
    args = ap.parse_args()
    gen = torch.Generator(device="cpu").manual_seed(7)
    for name in args.dtypes.split(","):
        model = load(args.model, DTYPES[name], args.attn)
        attn = getattr(model.config, "_attn_implementation", "?")
        for shape in args.shapes.split(","):
            b, s = (int(x) for x in shape.split("x"))
            ids = torch.randint(1000, 29000, (b, s), generator=gen)
            ids[:, 0], ids[:, -1] = 101, 102
            ids = ids.cuda()
            mask = torch.ones_like(ids)
            types = torch.zeros_like(ids)

            def step():
                hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                return pooled.cpu()

            with torch.inference_mode():
                for _ in range(args.warmup):
                    step()
                torch.cuda.synchronize()
                times = []
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
            times.sort()
            median = times[len(times) // 2]
            print(f"engine=torch({attn}) device=cuda dtype={name} shape={b}x{s} "
                  f"seqs_per_s={b / median:.1f} ms_per_batch={median * 1e3:.3f}", flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
