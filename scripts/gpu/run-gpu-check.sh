#!/usr/bin/env bash
# The encoder's GPU check, run once on a lent GPU machine (device tool) from the repo root, with
# target-cuda/gpu-bundle carried (made by scripts/gpu/make-bundle.sh). Writes $OUT/gpu-check.txt:
# the card, the CUDA libraries the binary resolves, f32/f16/bf16 agreement with CPU f32 vectors,
# sequences/s for the fused engine (the GPU default), the fused engine with one-pass attention
# (--engine flash), candle's stock graph (the before) and PyTorch at 128x32 and 512x128 in the
# same run, and the fused engines' time per operation. About 3-4 minutes of device time.
set -u
out="${OUT:-/tmp}"
. scripts/gpu/env.sh
{
  echo "== card"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  echo "== libraries"
  ldd "$bin" | grep -E "cuda|cublas|curand|nvrtc|not found"
  echo "== agreement with CPU f32 (288 texts, padded batches of 32)"
  for run in fused:f32 fused:f16 fused:bf16 flash:f16 flash:bf16 graph:f16; do
    engine="${run%:*}" dt="${run#*:}"
    timeout 90 "$bin" --model "$bundle/model" --device cuda:0 --engine "$engine" --dtype "$dt" agree "$bundle/reference.json" --min-cosine 0.999 || echo "agreement FAILED for $engine $dt"
  done
  # Most important first: the output so far comes back even if the run is cut short.
  shapes() {  # dtype engines...
    local dt="$1"; shift
    for shape in 128x32 512x128; do
      for engine in "$@"; do
        timeout 60 "$bin" --model "$bundle/model" --device cuda:0 --engine "$engine" --dtype "$dt" shapes --batch "${shape%x*}" --seq "${shape#*x}" --iters 20 --warmup 5 || echo "$engine $dt $shape FAILED"
      done
    done
  }
  echo "== f16 throughput: fused, flash (one-pass attention), candle's stock graph, PyTorch"
  shapes f16 fused flash graph
  timeout 120 python3 scripts/gpu/torch_bench.py "$bundle/model" --iters 20 --dtypes f16 2>/dev/null || echo "torch f16 FAILED"
  echo "== f16 per-op time (device synchronised after each op)"
  timeout 60 "$bin" --model "$bundle/model" --device cuda:0 --engine fused --dtype f16 ops --batch 512 --seq 128 --iters 5 || echo "fused ops 512x128 FAILED"
  timeout 60 "$bin" --model "$bundle/model" --device cuda:0 --engine flash --dtype f16 ops --batch 512 --seq 128 --iters 5 || echo "flash ops 512x128 FAILED"
  timeout 60 "$bin" --model "$bundle/model" --device cuda:0 --engine fused --dtype f16 ops --batch 128 --seq 32 --iters 5 || echo "fused ops 128x32 FAILED"
  echo "== bf16 and f32 throughput"
  shapes bf16 fused flash graph
  shapes f32 fused graph
  timeout 180 python3 scripts/gpu/torch_bench.py "$bundle/model" --iters 20 --dtypes bf16,f32 2>/dev/null || echo "torch bf16/f32 FAILED"
  echo "== f16 throughput vs batch and length (does it scale with work, or with launches?)"
  for shape in 32x128 1024x128 128x256; do
    for engine in fused flash; do
      timeout 60 "$bin" --model "$bundle/model" --device cuda:0 --engine "$engine" --dtype f16 shapes --batch "${shape%x*}" --seq "${shape#*x}" --iters 10 --warmup 3 || echo "$engine f16 $shape FAILED"
    done
  done
  echo "== mixed-length texts through the batcher, f16 (padded fused vs unpadded flash; tokenizer included)"
  for _ in $(seq 20); do cat "$bundle/agree-texts.txt"; done > /tmp/souk-texts.txt
  for engine in fused flash; do
    timeout 90 "$bin" --model "$bundle/model" --device cuda:0 --engine "$engine" --dtype f16 texts /tmp/souk-texts.txt --batch 256 --repeat 3 || echo "$engine texts FAILED"
  done
} 2>&1 | tee "$out/gpu-check.txt"
