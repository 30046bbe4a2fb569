#!/usr/bin/env bash
# Builds the CUDA encoder (souk-encoder + souk-encoder-bench with the `cuda` feature) on a
# machine without a GPU or a system CUDA toolkit. Proven recipe (see the team's CUDA notes):
#  - the CUDA 13.0 toolkit from PyPI wheels into a venv (nvcc 13.0 emits PTX that driver 580 takes);
#  - a stub libcuda.so.1 exporting the driver API names, only to satisfy the linker: at run time
#    the GPU machine's real driver library is loaded instead;
#  - unversioned lib*.so links the linker looks for (the wheels ship only lib*.so.13).
# Output: target-cuda/release/{souk-encoder,souk-encoder-bench}. First build about 12 min on 2 cores
# in session 4, including the toolkit wheels (session 2 measured about 37 min); later
# builds 1-5 min. Never part of CI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SOUK_CUDA_VENV:-$root/target-cuda/cu13}"
cap="${CUDA_COMPUTE_CAP:-90}"
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
if [ ! -x "$venv/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc" ]; then
  "$venv/bin/pip" install --quiet \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
fi
cuda_home="$(cd "$venv"/lib/python3.*/site-packages/nvidia/cu13 && pwd)"
links="$root/target-cuda/link"
mkdir -p "$links"
for lib in cublas cublasLt curand nvrtc cudart; do
  real="$(ls "$cuda_home"/lib/lib$lib.so.* 2>/dev/null | head -1 || true)"
  [ -n "$real" ] && ln -sf "$real" "$links/lib$lib.so"
done
if [ ! -f "$links/libcuda.so" ]; then
  # The stub's symbol list comes from cudarc's sources: fetch them first on a fresh machine.
  (cd "$root" && cargo fetch --locked --quiet)
  sys="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | head -1)"
  grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | awk '{print $4}' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$links/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$links/libcuda.so" "$links/libcuda_stub.c"
fi
export CUDA_HOME="$cuda_home" CUDA_PATH="$cuda_home" PATH="$cuda_home/bin:$PATH"
export CUDA_COMPUTE_CAP="$cap" CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$links"
export LIBRARY_PATH="$links:$cuda_home/lib:${LIBRARY_PATH:-}"
cd "$root"
cargo build --release --features cuda --target-dir target-cuda -p souk-encoder "$@"
ls -la target-cuda/release/souk-encoder*
