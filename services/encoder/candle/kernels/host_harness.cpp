// Runs one of fused.cu's kernels on the host through host_emulation.h, for the test in
// src/fused.rs that holds each kernel to its CPU reference at the launch shape the CUDA path
// uses. Usage:
//   host_harness OP DTYPE GRID_X GRID_Y BLOCK_X BLOCK_Y INT... [EPS] < inputs > output
// inputs: for each input tensor, a little-endian u64 count then that many f32 (lengths and
// offsets too, converted to u32); output: the result as f32. DTYPE (f32, f16, bf16) is what the kernel
// computes in: inputs are rounded to it, the output converted back.
#define SOUK_HOST_EMULATION
#include "fused.cu"

#include <cstdio>
#include <cstdlib>
#include <string>

static std::vector<float> read_tensor() {
    uint64_t n = 0;
    if (std::fread(&n, 8, 1, stdin) != 1) {
        std::fprintf(stderr, "missing input tensor\n");
        std::exit(2);
    }
    std::vector<float> v(n);
    if (n && std::fread(v.data(), 4, n, stdin) != n) {
        std::fprintf(stderr, "short input tensor\n");
        std::exit(2);
    }
    return v;
}

template <typename T>
static std::vector<T> to_t(const std::vector<float>& v) {
    std::vector<T> out;
    for (float x : v) out.push_back(from_float<T>(x));
    return out;
}

static std::vector<uint32_t> to_u32(const std::vector<float>& v) {
    std::vector<uint32_t> out;
    for (float x : v) out.push_back(static_cast<uint32_t>(x));
    return out;
}

template <typename T>
static void write_out(const std::vector<T>& v) {
    for (const T& x : v) {
        const float f = to_float(x);
        std::fwrite(&f, 4, 1, stdout);
    }
}

template <typename T> struct Entry;
#define ENTRIES(T, S)                                                              \
    template <> struct Entry<T> {                                                  \
        static constexpr auto split = bias_split_heads_##S;                        \
        static constexpr auto merge = merge_heads_##S;                             \
        static constexpr auto gelu = bias_gelu_##S;                                \
        static constexpr auto softmax = masked_softmax_##S;                        \
        static constexpr auto norm = bias_residual_norm_##S;                       \
        static constexpr auto pool = segment_pool_##S;                             \
    };
ENTRIES(float, f32)
ENTRIES(__half, f16)
ENTRIES(__nv_bfloat16, bf16)

template <typename T> struct AttentionEntry;
#define ATTENTION_ENTRIES(T, S)                                                    \
    template <> struct AttentionEntry<T> {                                         \
        static constexpr auto d32 = attention_d32_##S;                             \
        static constexpr auto d64 = attention_d64_##S;                             \
    };
ATTENTION_ENTRIES(__half, f16)
ATTENTION_ENTRIES(__nv_bfloat16, bf16)

template <typename T>
static int run(const std::string& op, dim3 grid, dim3 block, const std::vector<int>& a, float eps) {
    using E = Entry<T>;
    if (op == "bias_split_heads") {
        auto qkv = to_t<T>(read_tensor());
        auto bias = to_t<T>(read_tensor());
        std::vector<T> out(qkv.size());
        launch(grid, block, [&] { E::split(qkv.data(), bias.data(), out.data(), a[0], a[1], a[2], a[3]); });
        write_out(out);
    } else if (op == "merge_heads") {
        auto ctx = to_t<T>(read_tensor());
        std::vector<T> out(ctx.size());
        launch(grid, block, [&] { E::merge(ctx.data(), out.data(), a[0], a[1], a[2], a[3]); });
        write_out(out);
    } else if (op == "bias_gelu") {
        auto x = to_t<T>(read_tensor());
        auto bias = to_t<T>(read_tensor());
        std::vector<T> out(x.size());
        launch(grid, block, [&] { E::gelu(x.data(), bias.data(), out.data(), a[0], a[1]); });
        write_out(out);
    } else if (op == "masked_softmax") {
        auto scores = to_t<T>(read_tensor());
        auto lengths = to_u32(read_tensor());
        std::vector<T> out(scores.size());
        launch(grid, block, [&] { E::softmax(scores.data(), lengths.data(), out.data(), a[0], a[1], a[2]); });
        write_out(out);
    } else if (op == "bias_residual_norm") {
        auto x = to_t<T>(read_tensor());
        auto residual = to_t<T>(read_tensor());
        auto params = to_t<T>(read_tensor());
        std::vector<T> out(x.size());
        launch(grid, block, [&] { E::norm(x.data(), residual.data(), params.data(), out.data(), a[0], a[1], eps); });
        write_out(out);
    } else if (op == "attention") {
        if constexpr (std::is_same_v<T, float>) {
            std::fprintf(stderr, "attention takes f16 or bf16\n");
            return 2;
        } else {
            auto qkv = to_t<T>(read_tensor());
            auto bias = to_t<T>(read_tensor());
            auto offsets = to_u32(read_tensor());
            const int tiles = a[0], heads = a[1], head = a[2];
            std::vector<T> out(qkv.size() / 3);
            auto entry = head == 32 ? AttentionEntry<T>::d32 : AttentionEntry<T>::d64;
            launch(grid, block, [&] { entry(qkv.data(), bias.data(), offsets.data(), out.data(), tiles, heads); });
            write_out(out);
        }
    } else if (op == "segment_pool") {
        auto x = to_t<T>(read_tensor());
        auto offsets = to_u32(read_tensor());
        const int sequences = a[0], cols = a[1], cls = a[2];
        std::vector<T> out(static_cast<size_t>(sequences) * cols);
        launch(grid, block, [&] { E::pool(x.data(), offsets.data(), out.data(), sequences, cols, cls); });
        write_out(out);
    } else {
        std::fprintf(stderr, "unknown op %s\n", op.c_str());
        return 2;
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: host_harness OP DTYPE GX GY BX BY INT... [EPS]\n");
        return 2;
    }
    const std::string op = argv[1], dtype = argv[2];
    const dim3 grid{static_cast<unsigned>(std::atoi(argv[3])), static_cast<unsigned>(std::atoi(argv[4])), 1};
    const dim3 block{static_cast<unsigned>(std::atoi(argv[5])), static_cast<unsigned>(std::atoi(argv[6])), 1};
    std::vector<int> ints;
    float eps = 0.0f;
    for (int i = 7; i < argc; ++i) {
        const std::string s = argv[i];
        if (s.find('.') != std::string::npos || s.find('e') != std::string::npos) eps = std::strtof(argv[i], nullptr);
        else ints.push_back(std::atoi(argv[i]));
    }
    if (dtype == "f32") return run<float>(op, grid, block, ints, eps);
    if (dtype == "f16") return run<__half>(op, grid, block, ints, eps);
    if (dtype == "bf16") return run<__nv_bfloat16>(op, grid, block, ints, eps);
    std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
    return 2;
}
