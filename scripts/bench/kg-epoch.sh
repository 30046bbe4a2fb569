#!/usr/bin/env bash
# Seconds per training epoch: souk (soukctl kg eval --train-only) against PyKEEN on the same
# machine, same file, same model/dim/batch/negatives/loss/optimiser, one after the other.
#
#   scripts/bench/kg-epoch.sh [MODEL] [DIM] [NEGATIVES] [EPOCHS]
#
# PyKEEN trains on a leading PYKEEN_FRACTION (default 0.1) of the file, all entities kept, and the
# time is scaled to a full epoch: one full PyKEEN RotatE-500 epoch takes over 10 minutes here.
# PyKEEN runs in a throwaway venv (BENCH_VENV, default /tmp/bench-venv; created if missing:
# PyTorch from PyPI is the CUDA build, ~4.5 GB, a few minutes to install).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-rotate}
DIM=${2:-500}
NEG=${3:-256}
EPOCHS=${4:-2}
DATA=${DATASET:-../shared/datasets/kg/wn18rr}
VENV=${BENCH_VENV:-/tmp/bench-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import pykeen" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q pykeen
fi
cargo build --release -q -p soukctl
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "model $MODEL dim $DIM batch 512 negatives $NEG, $EPOCHS epochs each, 2 threads"
./target/release/soukctl kg eval --dataset "$DATA" --model "$MODEL" --dim "$DIM" \
  --negatives "$NEG" --batch-size 512 --epochs "$EPOCHS" --threads 2 --train-only | grep -E "^epoch|souk"
"$VENV/bin/python" scripts/bench/pykeen_epoch.py --train "$DATA/train.txt" --model "$MODEL" \
  --dim "$DIM" --negatives "$NEG" --batch-size 512 --epochs "$EPOCHS" --threads 2 \
  --fraction "${PYKEEN_FRACTION:-0.1}"
