// Just enough of CUDA to run fused.cu's kernels on the host, for the test that holds them to
// their CPU references (src/fused.rs, `kernels_on_the_host`) in CI, where no GPU exists.
//
// A launch runs the blocks one after another, each block as one host thread per CUDA thread:
// __syncthreads is a barrier over the block, and each warp's 32 threads meet at a barrier of
// their own before and after every shuffle and WMMA call (warp-synchronous, like the device).
// __shared__ memory is a static in the kernel, which serves because one block runs at a time. __half is GCC's _Float16 (IEEE binary16, round to
// nearest even like __float2half); __nv_bfloat16 is the top half of a float, rounded to nearest
// even like __float2bfloat16. What this cannot catch: device-only behaviour (alignment,
// coalescing, the real intrinsics' last-bit rounding).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
// Blocks run one at a time, so one static instance per kernel serves as the block's memory.
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::min;

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

struct __half {
    _Float16 v;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half(float f) { return __half{static_cast<_Float16>(f)}; }

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = static_cast<uint32_t>(b.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return __nv_bfloat16{0x7fc0};
    u += 0x7fff + ((u >> 16) & 1);  // round to nearest even
    return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}

// The running thread's warp barrier and exchange slots, and the block's barrier.
inline thread_local std::barrier<>* warp_barrier = nullptr;
inline thread_local float* warp_slots = nullptr;
inline thread_local unsigned lane_id = 0;
inline std::barrier<>* block_barrier = nullptr;

inline float __shfl_xor_sync(unsigned, float v, int lane_mask, int = 32) {
    warp_slots[lane_id] = v;
    warp_barrier->arrive_and_wait();
    const float other = warp_slots[lane_id ^ static_cast<unsigned>(lane_mask)];
    warp_barrier->arrive_and_wait();
    return other;
}

inline void __syncwarp(unsigned = 0xffffffff) { warp_barrier->arrive_and_wait(); }

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

// WMMA with the documented semantics, not the hardware's fragment layout: every lane holds the
// whole 16x16 tile (as float, after rounding to the input type); products are exact and summed
// in float, as tensor cores do with f32 accumulators; stores are done once, by lane 0. Each call
// is warp-synchronous, like the real *_sync functions.
inline float emu_float(float x) { return x; }
inline float emu_float(__half x) { return __half2float(x); }
inline float emu_float(__nv_bfloat16 x) { return __bfloat162float(x); }

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulation knows 16x16x16 only");
    float x[256];  // element (row, col) of the operand's logical matrix at x[row * 16 + col]
};

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
    warp_barrier->arrive_and_wait();
    constexpr bool row = std::is_same_v<Layout, row_major>;
    for (unsigned i = 0; i < 16; ++i)
        for (unsigned j = 0; j < 16; ++j) f.x[i * 16 + j] = emu_float(row ? p[i * ldm + j] : p[j * ldm + i]);
    warp_barrier->arrive_and_wait();
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                             layout_t layout) {
    warp_barrier->arrive_and_wait();
    for (unsigned i = 0; i < 16; ++i)
        for (unsigned j = 0; j < 16; ++j) f.x[i * 16 + j] = layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
    warp_barrier->arrive_and_wait();
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
    warp_barrier->arrive_and_wait();
    if (lane_id == 0)
        for (unsigned i = 0; i < 16; ++i)
            for (unsigned j = 0; j < 16; ++j) (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.x[i * 16 + j];
    warp_barrier->arrive_and_wait();
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
    for (float& e : f.x) e = v;
}

template <typename T, typename La, typename Lb>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, La>& a,
                     const fragment<matrix_b, 16, 16, 16, T, Lb>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
    warp_barrier->arrive_and_wait();
    float out[256];
    for (unsigned m = 0; m < 16; ++m)
        for (unsigned n = 0; n < 16; ++n) {
            float acc = c.x[m * 16 + n];
            for (unsigned k = 0; k < 16; ++k) acc += a.x[m * 16 + k] * b.x[k * 16 + n];
            out[m * 16 + n] = acc;
        }
    std::memcpy(d.x, out, sizeof out);
    warp_barrier->arrive_and_wait();
}
}  // namespace nvcuda::wmma

// Runs `kernel` (a lambda calling the extern "C" entry) on grid x block.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z;
    const unsigned warps = (threads + 31) / 32;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> whole(threads);
                block_barrier = &whole;
                std::vector<std::unique_ptr<std::barrier<>>> per_warp;
                std::vector<float> slots(warps * 32);
                for (unsigned w = 0; w < warps; ++w)
                    per_warp.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
                std::vector<std::thread> running;
                for (unsigned t = 0; t < threads; ++t) {
                    running.emplace_back([&, t] {
                        threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = dim3{bx, by, bz};
                        warp_barrier = per_warp[t / 32].get();
                        warp_slots = slots.data() + (t / 32) * 32;
                        lane_id = t % 32;
                        kernel();
                        // Threads that left early must not hold the others at a barrier.
                        warp_barrier->arrive_and_drop();
                        whole.arrive_and_drop();
                    });
                }
                for (auto& t : running) t.join();
            }
}
