#!/usr/bin/env bash
# The encoder's GPU check, run once on a lent GPU machine (device tool) from the repo root, with
# target-cuda/gpu-bundle carried (made by scripts/gpu/make-bundle.sh). Writes $OUT/gpu-check.txt:
# the card, the CUDA libraries the binary resolves, f32/f16/bf16 agreement with CPU f32 vectors,
# and sequences/s for candle and PyTorch at 128x32 and 512x128 in the same run.
set -u
out="${OUT:-/tmp}"
. scripts/gpu/env.sh
{
  echo "== card"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  echo "== libraries"
  ldd "$bin" | grep -E "cuda|cublas|curand|nvrtc|not found"
  echo "== agreement with CPU f32 (288 texts)"
  for dt in f32 f16 bf16; do
    timeout 90 "$bin" --model "$bundle/model" --device cuda:0 --dtype "$dt" agree "$bundle/reference.json" --min-cosine 0.999 || echo "agreement FAILED for $dt"
  done
  echo "== throughput, candle"
  for dt in f32 f16 bf16; do
    for shape in 128x32 512x128; do
      timeout 60 "$bin" --model "$bundle/model" --device cuda:0 --dtype "$dt" shapes --batch "${shape%x*}" --seq "${shape#*x}" --iters 20 --warmup 5 || echo "candle $dt $shape FAILED"
    done
  done
  echo "== throughput, PyTorch (same shapes, same weights)"
  timeout 240 python3 scripts/gpu/torch_bench.py "$bundle/model" --iters 20 2>/dev/null || echo "torch bench FAILED"
  echo "== PyTorch with unfused (eager) attention, for the diagnosis"
  timeout 120 python3 scripts/gpu/torch_bench.py "$bundle/model" --iters 20 --dtypes f16 --attn eager 2>/dev/null || echo "torch eager FAILED"
} 2>&1 | tee "$out/gpu-check.txt"
