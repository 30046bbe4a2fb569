# Sourced by the GPU scripts on the lent machine: unpacks the bench binary of
# target-cuda/gpu-bundle to $bin and points LD_LIBRARY_PATH at cuBLAS/cuRAND/NVRTC (the system
# toolkit, else PyTorch's nvidia wheels).
bundle=target-cuda/gpu-bundle
bin=/tmp/souk-encoder-bench
python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$bundle/souk-encoder-bench.xz" > "$bin"
chmod +x "$bin"
libs="/usr/local/cuda/lib64"
for d in $(python3 -c 'import nvidia, os; p = list(nvidia.__path__)[0]; print(" ".join(os.path.join(r) for r, _, f in os.walk(p) if any(x.startswith(("libcublas", "libcurand", "libnvrtc")) for x in f)))' 2>/dev/null); do
  libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
