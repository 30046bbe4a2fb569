// Just enough of CUDA to run fused.cu's kernels on the host, for the test that holds them to
// their CPU references (src/fused.rs, `kernels_on_the_host`) in CI, where no GPU exists.
//
// A launch runs every warp of every block in turn, each warp as 32 host threads in lock step
// at shuffles (a barrier before and after each exchange). The kernels use no shared memory and
// no __syncthreads, so warps are independent. __half is GCC's _Float16 (IEEE binary16, round to
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
#include <thread>
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

// The running warp's exchange slots and barrier.
inline std::barrier<>* warp_barrier = nullptr;
inline float warp_slots[32];

inline float __shfl_xor_sync(unsigned, float v, int lane_mask, int = 32) {
    const unsigned lane = threadIdx.x % 32;
    warp_slots[lane] = v;
    warp_barrier->arrive_and_wait();
    const float other = warp_slots[lane ^ static_cast<unsigned>(lane_mask)];
    warp_barrier->arrive_and_wait();
    return other;
}

// Runs `kernel` (a lambda calling the extern "C" entry) on grid x block, warp by warp.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
                for (unsigned first = 0; first < threads; first += 32) {
                    const unsigned lanes = std::min(32u, threads - first);
                    std::barrier<> barrier(lanes);
                    warp_barrier = &barrier;
                    std::vector<std::thread> warp;
                    for (unsigned lane = 0; lane < lanes; ++lane) {
                        warp.emplace_back([&, lane] {
                            const unsigned t = first + lane;
                            threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                            blockIdx = dim3{bx, by, bz};
                            kernel();
                            barrier.arrive_and_drop();  // lanes that left early free the others
                        });
                    }
                    for (auto& t : warp) t.join();
                }
}
