#!/usr/bin/env bash
# Where candle's stock graph (--engine graph) spends GPU time, for the encoder speed work
# (run-gpu-check.sh profiles the fused engine, the default) (run on a lent GPU machine from the
# repo root with target-cuda/gpu-bundle carried). Writes $OUT/gpu-profile.txt: throughput over
# batch sizes at 128 tokens (does it scale with work, or is it per-op overhead?), candle's time
# per operation (`souk-encoder-bench ops`, synchronised after each op), and, when
# Nsight Systems is installed there, the CUDA kernel and API summaries of one f16 512x128 run.
set -u
out="${OUT:-/tmp}"
. scripts/gpu/env.sh
{
  echo "== card"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  echo "== f16 throughput vs batch at 128 tokens, and vs tokens at batch 128"
  for shape in 32x128 128x128 512x128 1024x128 128x32 128x256; do
    timeout 60 "$bin" --model "$bundle/model" --device cuda:0 --engine graph --dtype f16 shapes --batch "${shape%x*}" --seq "${shape#*x}" --iters 10 --warmup 3 || echo "$shape FAILED"
  done
  echo "== candle per-op time (device synchronised after each op; souk-encoder-bench ops)"
  timeout 90 "$bin" --model "$bundle/model" --device cuda:0 --engine graph --dtype f16 ops --batch 512 --seq 128 --iters 5 || echo "ops 512x128 FAILED"
  timeout 60 "$bin" --model "$bundle/model" --device cuda:0 --engine graph --dtype f16 ops --batch 128 --seq 32 --iters 5 || echo "ops 128x32 FAILED"
  nsys=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys /usr/local/cuda*/nsight-systems*/bin/nsys 2>/dev/null | head -1)
  echo "== nsys: ${nsys:-not found}"
  if [ -n "$nsys" ]; then
    timeout 180 "$nsys" profile -q -t cuda -o /tmp/prof --force-overwrite true "$bin" --model "$bundle/model" --device cuda:0 --dtype f16 shapes --batch 512 --seq 128 --iters 5 --warmup 2 >/dev/null 2>&1
    timeout 120 "$nsys" stats -q --report cuda_gpu_kern_sum --format csv /tmp/prof.nsys-rep 2>/dev/null | head -40
    timeout 120 "$nsys" stats -q --report cuda_api_sum --format csv /tmp/prof.nsys-rep 2>/dev/null | head -20
    timeout 120 "$nsys" stats -q --report cuda_gpu_mem_time_sum --format csv /tmp/prof.nsys-rep 2>/dev/null | head -12
  else
    python3 - <<'PY'
import torch
from torch.profiler import profile, ProfilerActivity
print("torch kernel mix for comparison (BertModel f16 512x128, SDPA):")
from transformers import BertModel, BertConfig
import sys
cfg = BertConfig.from_pretrained("target-cuda/gpu-bundle/model")
m = BertModel(cfg).cuda().half().eval()
ids = torch.randint(0, cfg.vocab_size, (512, 128), device="cuda")
with torch.no_grad():
    for _ in range(3): m(ids)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        m(ids); torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=15))
PY
  fi
} 2>&1 | tee "$out/gpu-profile.txt"
