// Host emulation of the decode-attention CUDA kernels, for machines without a GPU (CI).
//
// g++ compiles csrc/decode_attention.cu and .cuh unchanged against the shim headers in include/:
// each emulated block runs blockDim.x std::threads (threadIdx is thread-local, __syncthreads a
// std::barrier over the block, __shfl_xor_sync an exchange through a per-warp slot array between
// two per-warp barriers), blocks run one after another, shared memory is a global buffer refilled
// with NaN before each block, outputs and the workspace start as NaN. Checked against a double
// precision softmax on the same (rounded) inputs: the split/merge algebra, GQA head mapping and
// masking, padded/packed/strided K/V indexing, seqlens clamping, empty sequences, lse, and the
// launcher's argument checks. It cannot check timing, inter-block races or device intrinsics.
//
// Build and run (tests/test_build_decode.py does this):
//   g++ -std=c++20 -O1 -pthread -Icsrc/emu/include -Icsrc -x c++ csrc/decode_attention.cu
//       -x c++ csrc/emu/decode_attention_emu.cpp -o decode_emu && ./decode_emu
#include <barrier>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "decode_attention.cuh"
#include "haic_kernels.h"

thread_local emu_uint3 threadIdx;
thread_local emu_uint3 blockIdx;
static std::barrier<>* g_block_barrier = nullptr;
void __syncthreads() { g_block_barrier->arrive_and_wait(); }

static constexpr int kMaxThreads = 128;
static std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
static float g_slots[kMaxThreads];

float __shfl_xor_sync(unsigned, float var, int lane_mask, int width) {
  const unsigned t = threadIdx.x;
  const unsigned lane = t % 32, warp = t / 32;
  if (width != 32 || lane_mask >= 32) std::abort();
  g_slots[t] = var;
  g_warp_barriers[warp]->arrive_and_wait();
  const float other = g_slots[warp * 32 + (lane ^ static_cast<unsigned>(lane_mask))];
  g_warp_barriers[warp]->arrive_and_wait();
  return other;
}

namespace haic::decode_detail {
alignas(16) float decode_smem[16 * 1024];  // the kernels' `extern __shared__` array (64 KiB)
}

static long g_launches = 0;

cudaError_t cudaLaunchKernel(const void* func, dim3 grid, dim3 block, void** args,
                             std::size_t smem, cudaStream_t) {
  using Kernel = void (*)(haic::DecodeAttentionParams, haic::decode_detail::Layout);
  auto kernel = reinterpret_cast<Kernel>(const_cast<void*>(func));
  const auto prm = *static_cast<haic::DecodeAttentionParams*>(args[0]);
  const auto lay = *static_cast<haic::decode_detail::Layout*>(args[1]);
  if (smem > 48 * 1024 || block.x > kMaxThreads || block.x % 32 != 0) return 98;
  ++g_launches;
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::fill(std::begin(haic::decode_detail::decode_smem),
                  std::end(haic::decode_detail::decode_smem), std::nanf(""));
        std::barrier<> bar(block.x);
        g_block_barrier = &bar;
        g_warp_barriers.clear();
        for (unsigned w = 0; w < block.x / 32; ++w) {
          g_warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
        }
        std::vector<std::thread> threads;
        threads.reserve(block.x);
        for (unsigned t = 0; t < block.x; ++t) {
          threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            blockIdx = {bx, by, bz};
            kernel(prm, lay);
          });
        }
        for (auto& th : threads) th.join();
      }
    }
  }
  return cudaSuccess;
}

namespace {

using haic::DType;

std::uint16_t to_bits(float x, DType d) {
  if (d == DType::kFloat16) {
    const __half h = __float2half_rn(x);
    std::uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
  }
  return __float2bfloat16_rn(x).v;
}

float from_bits(std::uint16_t u, DType d) {
  if (d == DType::kFloat16) {
    __half h;
    std::memcpy(&h, &u, 2);
    return __half2float(h);
  }
  return __uint_as_float(static_cast<unsigned>(u) << 16);
}

struct Case {
  const char* what;
  DType dtype;
  int batch, q_heads, kv_heads, head_dim;
  int max_seqlen;                // S (padded) or Tk (packed)
  std::vector<int> seqlens;      // padded: per-sequence lengths (empty: all S)
  std::vector<int> cu;           // packed: cu_seqlens_k (empty: padded layout)
  int row_pad;                   // extra elements per K/V row group (strided cache slice)
  int splits;
  bool with_lse;
  // Non-finite values: the rows past each length are NaN (never read), one valid K entry of
  // (b 0, kv head 0) is +Inf where q is negative (a -inf logit unless the kernel marks the row),
  // one valid V entry of (b B-1, kv head Hkv-1) is NaN.
  bool poison = false;
};

// A 16-byte aligned buffer of n 16-bit elements filled with random values of dtype d.
struct Buf {
  std::vector<std::uint16_t> raw;
  std::uint16_t* p;
  explicit Buf(std::size_t n) : raw(n + 8) {
    p = raw.data() + (16 - reinterpret_cast<std::uintptr_t>(raw.data()) % 16) % 16 / 2;
  }
};

int run_case(const Case& cs, std::mt19937& rng) {
  const int B = cs.batch, Hq = cs.q_heads, Hkv = cs.kv_heads, D = cs.head_dim;
  const bool packed = !cs.cu.empty();
  const int S = cs.max_seqlen;
  // K/V: rows of Hkv*D (+ pad) elements; padded adds a batch stride of S rows.
  const std::int64_t st_h = D, st_s = static_cast<std::int64_t>(Hkv) * D + cs.row_pad;
  const std::int64_t st_b = packed ? 0 : st_s * S;
  const std::size_t kv_n = static_cast<std::size_t>(packed ? st_s * S : st_b * B) + 8;
  Buf q(static_cast<std::size_t>(B) * Hq * D), k(kv_n), v(kv_n);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto* buf : {&q, &k, &v}) {
    for (auto& x : buf->raw) x = to_bits(nd(rng), cs.dtype);
  }
  auto seq_len = [&](int b) -> std::int64_t {
    if (packed) return std::clamp(cs.cu[b + 1], std::clamp(cs.cu[b], 0, S), S) -
                       std::clamp(cs.cu[b], 0, S);
    return cs.seqlens.empty() ? S : std::clamp(cs.seqlens[b], 0, S);
  };
  const std::uint16_t nan_bits = cs.dtype == DType::kFloat16 ? 0x7E00 : 0x7FC0;
  const std::uint16_t inf_bits = cs.dtype == DType::kFloat16 ? 0x7C00 : 0x7F80;
  if (cs.poison) {  // padded layout only
    for (int b = 0; b < B; ++b) {
      for (std::int64_t j = seq_len(b); j < S; ++j) {
        for (std::int64_t e = 0; e < st_s; ++e) {
          k.p[b * st_b + j * st_s + e] = nan_bits;
          v.p[b * st_b + j * st_s + e] = nan_bits;
        }
      }
    }
    k.p[0 * st_b + 1 * st_s + 0 * st_h + 3] = inf_bits;
    for (int h = 0; h < Hq / Hkv; ++h) {
      q.p[static_cast<std::int64_t>(h) * D + 3] = to_bits(-1.0f, cs.dtype);
    }
    v.p[(B - 1) * st_b + 0 * st_s + (Hkv - 1) * st_h + 5] = nan_bits;
  }
  std::vector<std::uint16_t> out(static_cast<std::size_t>(B) * Hq * D + 8, 0x7FFF);  // NaN
  std::vector<float> lse(static_cast<std::size_t>(B) * Hq, std::nanf(""));
  const std::int64_t ws_bytes =
      haic::decode_attention_workspace_bytes(B, Hq, D, cs.splits);
  std::vector<float> ws(static_cast<std::size_t>(ws_bytes / 4) + 1, std::nanf(""));
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  haic::DecodeAttentionParams prm{};
  prm.q = q.p;
  prm.k = k.p;
  prm.v = v.p;
  prm.out = out.data() + 1;  // only 2-byte aligned: outputs are written as scalars
  prm.lse = cs.with_lse ? lse.data() : nullptr;
  prm.seqlens_k = cs.seqlens.empty() ? nullptr : cs.seqlens.data();
  prm.cu_seqlens_k = packed ? cs.cu.data() : nullptr;
  prm.dtype = cs.dtype;
  prm.batch = B;
  prm.q_heads = Hq;
  prm.kv_heads = Hkv;
  prm.head_dim = D;
  prm.max_seqlen = S;
  prm.q_stride_b = static_cast<std::int64_t>(Hq) * D;
  prm.q_stride_h = D;
  prm.k_stride_b = prm.v_stride_b = st_b;
  prm.k_stride_s = prm.v_stride_s = st_s;
  prm.k_stride_h = prm.v_stride_h = st_h;
  prm.out_stride_b = static_cast<std::int64_t>(Hq) * D;
  prm.out_stride_h = D;
  prm.lse_stride_b = Hq;
  prm.lse_stride_h = 1;
  prm.scale = scale;
  prm.num_splits = cs.splits;
  prm.workspace = ws.data();
  prm.workspace_bytes = ws_bytes;
  const cudaError_t err = haic::decode_attention(prm, nullptr);
  if (err != cudaSuccess) {
    std::printf("%s: launch failed: %d\n", cs.what, err);
    return 1;
  }

  const double tol_rel = cs.dtype == DType::kFloat16 ? 1.0 / 1024 : 1.0 / 128;
  int bad = 0;
  double worst = 0.0;
  for (int b = 0; b < B; ++b) {
    std::int64_t first = 0, len = S;
    if (packed) {
      first = std::clamp(cs.cu[b], 0, S);
      len = std::clamp(cs.cu[b + 1], static_cast<int>(first), S) - first;
    } else if (!cs.seqlens.empty()) {
      len = std::clamp(cs.seqlens[b], 0, S);
    }
    for (int h = 0; h < Hq; ++h) {
      const int g = h / (Hq / Hkv);
      const std::uint16_t* qr = q.p + (static_cast<std::int64_t>(b) * Hq + h) * D;
      // The rule for non-finite inputs: a bad K row seen makes the row NaN, a bad V entry its
      // column.
      const bool row_nan = cs.poison && b == 0 && g == 0 && len > 1;
      const bool col_nan = cs.poison && b == B - 1 && g == Hkv - 1 && len > 0;
      std::vector<double> s(len);
      double mx = -INFINITY;
      for (std::int64_t j = 0; j < len; ++j) {
        const std::uint16_t* kr = k.p + b * st_b + (first + j) * st_s + g * st_h;
        double dot = 0;
        for (int d = 0; d < D; ++d) {
          dot += static_cast<double>(from_bits(qr[d], cs.dtype)) * from_bits(kr[d], cs.dtype);
        }
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double denom = 0;
      for (std::int64_t j = 0; j < len; ++j) denom += std::exp(s[j] - mx);
      for (int d = 0; d < D; ++d) {
        double o = 0;
        for (std::int64_t j = 0; j < len; ++j) {
          const std::uint16_t* vr = v.p + b * st_b + (first + j) * st_s + g * st_h;
          o += std::exp(s[j] - mx) * from_bits(vr[d], cs.dtype);
        }
        o = len > 0 ? o / denom : 0.0;
        const float got =
            from_bits(out[1 + (static_cast<std::size_t>(b) * Hq + h) * D + d], cs.dtype);
        if (row_nan || (col_nan && d == 5)) {
          if (!std::isnan(got) && bad++ < 5) {
            std::printf("  b%d h%d d%d: got %g want NaN\n", b, h, d, got);
          }
          continue;
        }
        const double err_abs = std::fabs(got - o);
        worst = std::max(worst, err_abs);
        if (!(err_abs <= tol_rel * std::fabs(o) + 1e-4) && bad++ < 5) {
          std::printf("  b%d h%d d%d: got %g want %g\n", b, h, d, got, o);
        }
      }
      if (cs.with_lse) {
        const double want = len > 0 ? mx + std::log(denom) : -INFINITY;
        const float got = lse[static_cast<std::size_t>(b) * Hq + h];
        const bool ok = row_nan  ? std::isnan(got)
                        : len > 0 ? std::fabs(got - want) <= 1e-4 * (1 + std::fabs(want))
                                  : (std::isinf(got) && got < 0);
        if (!ok && bad++ < 5) std::printf("  lse b%d h%d: got %g want %g\n", b, h, got, want);
      }
    }
  }
  bad += out[0] != 0x7FFF || out[1 + static_cast<std::size_t>(B) * Hq * D] != 0x7FFF;
  std::printf("%-44s B%d Hq%d Hkv%d D%d S%d splits%d: %s (max|err| %.2e)\n", cs.what, B, Hq, Hkv,
              D, S, cs.splits, bad ? "MISMATCH" : "ok", worst);
  return bad;
}

}  // namespace

int main() {
  std::mt19937 rng(20240607);
  const DType bf = DType::kBFloat16, fp = DType::kFloat16;
  const std::vector<Case> cases = {
      {"bf16 GQA r=4 padded, seqlens, 3 splits", bf, 2, 8, 2, 128, 100, {100, 37}, {}, 0, 3, true},
      {"fp16 r=1 one split (direct write)", fp, 1, 2, 2, 64, 70, {}, {}, 0, 1, true},
      {"bf16 D=112 r=6 packed, empty seq, strided", bf, 3, 6, 1, 112, 133, {}, {0, 50, 50, 133},
       8, 4, true},
      {"fp16 r=12 (two head groups), 2 splits", fp, 1, 12, 1, 128, 33, {}, {}, 0, 2, false},
      {"bf16 r=2, seqlens clamped (-3, 500 > S)", bf, 2, 4, 2, 64, 40, {-3, 500}, {}, 16, 5, true},
      {"fp16 r=3 HPB=4 masked head, 1 key", fp, 1, 3, 1, 64, 1, {}, {}, 0, 1, true},
      {"bf16 all empty, one split", bf, 2, 4, 4, 128, 0, {}, {}, 0, 1, true},
      {"bf16 r=4 long: 1025 keys, 7 splits x 5 steps", bf, 1, 4, 1, 128, 1025, {}, {}, 0, 7,
       true},
      {"fp16 D=64 r=1 1025 keys, one split, 17 steps", fp, 1, 1, 1, 64, 1025, {}, {}, 0, 1,
       true},
      {"fp16 all empty, packed, 3 splits", fp, 2, 4, 2, 112, 16, {}, {0, 0, 0}, 0, 3, true},
      {"bf16 NaN/Inf: hidden rows, bad K row, bad V", bf, 2, 8, 2, 128, 90, {70, 33}, {}, 0, 3,
       true, true},
      {"fp16 NaN/Inf one split", fp, 2, 4, 4, 64, 40, {40, 9}, {}, 0, 1, true, true},
  };
  int failures = 0;
  for (const auto& cs : cases) failures += run_case(cs, rng) != 0;

  // Launcher argument checks (nothing may launch).
  const long before = g_launches;
  alignas(16) static std::uint16_t buf[4096];
  haic::DecodeAttentionParams p{};
  p.q = p.k = p.v = buf;
  p.out = buf;
  p.dtype = bf;
  p.batch = 1;
  p.q_heads = p.kv_heads = 1;
  p.head_dim = 64;
  p.max_seqlen = 4;
  p.k_stride_s = p.v_stride_s = 64;
  p.scale = 1.0f;
  p.num_splits = 1;
  auto rejects = [&](haic::DecodeAttentionParams x) {
    return haic::decode_attention(x, nullptr) == cudaErrorInvalidValue;
  };
  auto with = [&](auto edit) {
    haic::DecodeAttentionParams x = p;
    edit(x);
    return x;
  };
  failures += !rejects(with([](auto& x) { x.head_dim = 96; }));
  failures += !rejects(with([](auto& x) { x.dtype = DType::kFloat32; }));
  failures += !rejects(with([](auto& x) { x.q_heads = 3, x.kv_heads = 2; }));
  failures += !rejects(with([](auto& x) { x.k_stride_s = 60; }));
  failures += !rejects(with([&](auto& x) { x.v = buf + 1; }));
  failures += !rejects(with([](auto& x) { x.num_splits = 2; }));  // no workspace
  failures += !rejects(with([](auto& x) { x.num_splits = haic::kDecodeMaxSplits + 1; }));
  failures += !rejects(with([](auto& x) { x.scale = INFINITY; }));
  failures += haic::decode_attention(with([](auto& x) { x.batch = 0; }), nullptr) != cudaSuccess;
  failures += g_launches != before;
  // Split heuristic: B=1 fills 132 SMs; long sequences cap at the 128-split limit.
  failures += haic::decode_attention_num_splits(1, 32, 8, 16384, 132) != 66;
  failures += haic::decode_attention_num_splits(1, 32, 8, 100, 132) != 2;
  failures += haic::decode_attention_num_splits(1, 1, 1, 1 << 20, 132) != 128;
  failures += haic::decode_attention_num_splits(128, 32, 8, 16384, 132) != 1;
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
