// decode attention (flash-decoding): one query token per sequence against a KV cache.
//
// Memory-bound: every K and V element is read once, by one block, and used by all the query
// heads of its GQA group (r = q_heads / kv_heads of them, up to kHeadsPerBlock per block), so the
// floor is bytes = 2 * sum_b L_b * Hkv * D * itemsize. Example (bf16, D=128, Hkv=8, B=1, 16k
// keys): 64 MiB, 14 us at the H200's 4.8 TB/s; we expect ~75% of that at 16k keys (two kernels,
// a ~1-2 us tail) and launch/latency-bound ~1.5-2 TB/s at 2k keys (8 MiB). Prediction, not yet
// measured on a GPU.
//
// Kernel 1 (split): grid (split, kv head x head group, batch). A block walks its chunk of keys in
// steps of kGroups * kKeys rows. A "group" of kLanes threads owns one key row at a time, each lane
// a 16-byte slice (8 elements) of it: lanes load K and V slices of kKeys rows up front (8 x 16 B
// in flight per lane), dot the K slices with the HPB query heads held in registers, reduce the
// partial dots over the group with warp shuffles, and update that group's fp32 online-softmax
// state (scores in the log2 domain: q is pre-scaled by scale * log2(e), so exp2f is one MUFU op).
// The groups' states are merged through shared memory at the end. With one split the block writes
// the final output; otherwise unnormalized partials (acc, m, l) go to the workspace.
// Kernel 2 (combine): one block per (b, q head) merges the used splits' partials.
//
// Torch-free: included only by decode_attention.cu; see haic_kernels.h for the entry point.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "haic_kernels.h"

namespace haic {
namespace decode_detail {

// 4 warps: with kKeys = 4 and 8 K+V slices in flight per lane a block keeps 16 KiB of loads in
// flight; ~2-3 resident blocks per SM cover the ~30 KiB an H100/H200 SM needs to saturate HBM.
// Not yet swept on a GPU.
constexpr int kThreads = 128;
// Key rows per group per step: amortizes the online-softmax rescale (one exp2f per head per
// step instead of per key) and raises memory-level parallelism.
constexpr int kKeys = 4;
// Elements per 16-byte vector of fp16/bf16.
constexpr int kVec = 8;
constexpr int kCombineThreads = 128;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNaN = __builtin_nanf("");

template <int D>
struct Shape {
  static_assert(D % kVec == 0, "head dim must be a multiple of 8");
  static constexpr int kVecs = D / kVec;               // 8 (D=64), 14 (112), 16 (128)
  static constexpr int kLanes = kVecs <= 8 ? 8 : 16;   // lanes per key row, a power of two
  static_assert(kVecs <= kLanes && kLanes <= 32, "head dim too large for one row group");
  static constexpr int kGroups = kThreads / kLanes;    // key rows a block loads at once
  static constexpr int kStep = kGroups * kKeys;        // key rows a block consumes per step
};

// Run-time layout shared by both kernels (decode_attention.cu fills it).
struct Layout {
  int q_per_kv;     // r
  int head_groups;  // ceil(r / HPB): blocks per kv head and split
  int step;         // Shape<D>::kStep; split chunks are multiples of it
  float scale_log2; // scale * log2(e)
};

template <typename T>
struct Elem;

template <>
struct Elem<__half> {
  __device__ __forceinline__ static float load(const __half* p) { return __half2float(*p); }
  __device__ __forceinline__ static void store(__half* p, float x) { *p = __float2half_rn(x); }
  // Element 2i at the low half of word i (little endian), as memory holds it.
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[kVec]) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 h;
      memcpy(&h, &w[i], sizeof(h));
      const float2 p = __half22float2(h);
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
};

template <>
struct Elem<__nv_bfloat16> {
  __device__ __forceinline__ static float load(const __nv_bfloat16* p) {
    return __bfloat162float(*p);
  }
  __device__ __forceinline__ static void store(__nv_bfloat16* p, float x) {
    *p = __float2bfloat16_rn(x);
  }
  // bf16 -> fp32 is exact: the bits are the top half of the float.
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[kVec]) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
    }
  }
};

// Valid keys of sequence b: rows first .. first+len-1 of the (padded or packed) K/V.
__device__ __forceinline__ void seq_range(const DecodeAttentionParams& p, int b,
                                          std::int64_t& first, std::int64_t& len) {
  if (p.cu_seqlens_k != nullptr) {
    std::int64_t s0 = p.cu_seqlens_k[b];
    std::int64_t s1 = p.cu_seqlens_k[b + 1];
    s0 = s0 < 0 ? 0 : (s0 > p.max_seqlen ? p.max_seqlen : s0);
    s1 = s1 < s0 ? s0 : (s1 > p.max_seqlen ? p.max_seqlen : s1);
    first = s0;
    len = s1 - s0;
  } else {
    std::int64_t n = p.seqlens_k != nullptr ? p.seqlens_k[b] : p.max_seqlen;
    first = 0;
    len = n < 0 ? 0 : (n > p.max_seqlen ? p.max_seqlen : n);
  }
}

// Keys per split for a sequence of len keys: the same in both kernels, so the combine knows
// which splits were used (ceil(len / chunk) of them; the others wrote nothing).
__device__ __forceinline__ std::int64_t split_chunk(std::int64_t len, int splits, int step) {
  const std::int64_t c = (len + splits - 1) / splits;
  return (c + step - 1) / step * step;
}

// Sum over the kLanes lanes of a row group (xor offsets < kLanes stay inside the group).
template <int kLanes>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int off = kLanes / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xFFFFFFFFu, x, off);
  return x;
}

template <typename T, int D, int HPB>
__global__ void __launch_bounds__(kThreads)
    decode_split_kernel(const DecodeAttentionParams p, const Layout lay) {
  using S = Shape<D>;
  extern __shared__ __align__(16) float decode_smem[];

  const int split = static_cast<int>(blockIdx.x);
  const int kvh = static_cast<int>(blockIdx.y) / lay.head_groups;
  const int hg = static_cast<int>(blockIdx.y) - kvh * lay.head_groups;
  const int b = static_cast<int>(blockIdx.z);
  std::int64_t first, len;
  seq_range(p, b, first, len);
  const std::int64_t chunk = split_chunk(len, p.num_splits, lay.step);
  const std::int64_t start = split * chunk;
  // An unused split writes nothing (block-uniform exit); with one split the block must still
  // write the zeros of an empty sequence.
  if (p.num_splits > 1 && start >= len) return;
  const std::int64_t end = start + chunk < len ? start + chunk : len;

  const int lane = static_cast<int>(threadIdx.x) % S::kLanes;
  const int grp = static_cast<int>(threadIdx.x) / S::kLanes;
  const bool active = lane < S::kVecs;  // D=112 leaves 2 of 16 lanes idle
  const int h0 = kvh * lay.q_per_kv + hg * HPB;  // first query head of this block
  const int nh = min(HPB, lay.q_per_kv - hg * HPB);

  float q[HPB][kVec];
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
    const T* qp = static_cast<const T*>(p.q) + b * p.q_stride_b + (h0 + h) * p.q_stride_h +
                  lane * kVec;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float x = active && h < nh ? Elem<T>::load(qp + e) : 0.0f;
      // A non-finite q entry becomes NaN (an Inf could give -inf logits, which read as "no
      // key"): the row is NaN, haic_kernels.attention's rule for non-finite inputs.
      q[h][e] = fabsf(x) < INFINITY ? x * lay.scale_log2 : kNaN;
    }
  }

  const T* kp = static_cast<const T*>(p.k) + b * p.k_stride_b + kvh * p.k_stride_h +
                first * p.k_stride_s + lane * kVec;
  const T* vp = static_cast<const T*>(p.v) + b * p.v_stride_b + kvh * p.v_stride_h +
                first * p.v_stride_s + lane * kVec;

  float m[HPB], l[HPB], acc[HPB][kVec];
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[h][e] = 0.0f;
  }

  // The trip count is block-uniform, so every lane reaches every shuffle.
  for (std::int64_t base = start; base < end; base += S::kStep) {
    uint4 kr[kKeys], vr[kKeys];
    bool valid[kKeys];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      const std::int64_t j = base + grp * kKeys + u;
      valid[u] = j < end;
      if (active && valid[u]) {
        kr[u] = __ldg(reinterpret_cast<const uint4*>(kp + j * p.k_stride_s));
        vr[u] = __ldg(reinterpret_cast<const uint4*>(vp + j * p.v_stride_s));
      } else {
        kr[u] = make_uint4(0u, 0u, 0u, 0u);
        vr[u] = make_uint4(0u, 0u, 0u, 0u);
      }
    }
    float s[kKeys][HPB];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      float kf[kVec];
      Elem<T>::unpack(kr[u], kf);
      // A key row holding NaN/Inf makes the logit NaN for every head that sees it (the rule of
      // haic_kernels.attention), whatever the sign an Inf product would have.
      bool k_bad = false;
#pragma unroll
      for (int e = 0; e < kVec; ++e) k_bad |= !(fabsf(kf[e]) < INFINITY);
#pragma unroll
      for (int h = 0; h < HPB; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot = fmaf(q[h][e], kf[e], dot);
        dot = group_sum<S::kLanes>(k_bad ? kNaN : dot);
        s[u][h] = valid[u] ? dot : -INFINITY;
      }
    }
    float base_m[HPB];
#pragma unroll
    for (int h = 0; h < HPB; ++h) {
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < kKeys; ++u) mx = fmaxf(mx, s[u][h]);
      // mx = -inf only while this group has seen no valid key: keep the state at zero.
      base_m[h] = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2f(m[h] - base_m[h]);
      m[h] = mx;
      l[h] *= alpha;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[h][e] *= alpha;
    }
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      float vf[kVec];
      Elem<T>::unpack(vr[u], vf);
#pragma unroll
      for (int h = 0; h < HPB; ++h) {
        const float pr = exp2f(s[u][h] - base_m[h]);
        l[h] += pr;
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[h][e] = fmaf(pr, vf[e], acc[h][e]);
      }
    }
  }

  // Merge the kGroups row groups: smem [kGroups][HPB] m, then l, then acc [kGroups][HPB][D].
  float* sm_m = decode_smem;
  float* sm_l = sm_m + S::kGroups * HPB;
  float* sm_acc = sm_l + S::kGroups * HPB;
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
    if (lane == 0) {
      sm_m[grp * HPB + h] = m[h];
      sm_l[grp * HPB + h] = l[h];
    }
    if (active) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) sm_acc[(grp * HPB + h) * D + lane * kVec + e] = acc[h][e];
    }
  }
  __syncthreads();

  for (int idx = static_cast<int>(threadIdx.x); idx < nh * D; idx += kThreads) {
    const int h = idx / D;
    const int d = idx - h * D;
    float mx = -INFINITY;
    for (int g = 0; g < S::kGroups; ++g) mx = fmaxf(mx, sm_m[g * HPB + h]);
    const float mb = mx == -INFINITY ? 0.0f : mx;
    float sum_l = 0.0f, sum_a = 0.0f;
    for (int g = 0; g < S::kGroups; ++g) {
      const float w = exp2f(sm_m[g * HPB + h] - mb);
      sum_l = fmaf(sm_l[g * HPB + h], w, sum_l);
      sum_a = fmaf(sm_acc[(g * HPB + h) * D + d], w, sum_a);
    }
    const int hq = h0 + h;
    if (p.num_splits == 1) {
      T* op = static_cast<T*>(p.out) + b * p.out_stride_b + hq * p.out_stride_h;
      Elem<T>::store(op + d, sum_l == 0.0f ? 0.0f : sum_a / sum_l);
      if (d == 0 && p.lse != nullptr) {
        p.lse[b * p.lse_stride_b + hq * p.lse_stride_h] =
            sum_l == 0.0f ? -INFINITY : (mx + log2f(sum_l)) * kLn2;
      }
    } else {
      const std::int64_t row =
          (static_cast<std::int64_t>(b) * p.q_heads + hq) * p.num_splits + split;
      p.workspace[row * D + d] = sum_a;
      if (d == 0) {
        float* ml = p.workspace + static_cast<std::int64_t>(p.batch) * p.q_heads *
                                      p.num_splits * D;
        ml[2 * row] = mx;
        ml[2 * row + 1] = sum_l;
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kCombineThreads)
    decode_combine_kernel(const DecodeAttentionParams p, const Layout lay) {
  const std::int64_t row = blockIdx.x;  // b * q_heads + hq
  const int b = static_cast<int>(row / p.q_heads);
  const int hq = static_cast<int>(row - static_cast<std::int64_t>(b) * p.q_heads);
  std::int64_t first, len;
  seq_range(p, b, first, len);
  const std::int64_t chunk = split_chunk(len, p.num_splits, lay.step);
  const int used = chunk > 0 ? static_cast<int>((len + chunk - 1) / chunk) : 0;
  const int D = p.head_dim;
  const float* po = p.workspace + row * p.num_splits * D;
  const float* ml = p.workspace + static_cast<std::int64_t>(p.batch) * p.q_heads *
                                      p.num_splits * D + 2 * row * p.num_splits;
  float mx = -INFINITY;
  for (int s = 0; s < used; ++s) mx = fmaxf(mx, ml[2 * s]);
  const float mb = mx == -INFINITY ? 0.0f : mx;
  float sum_l = 0.0f;
  for (int s = 0; s < used; ++s) sum_l = fmaf(ml[2 * s + 1], exp2f(ml[2 * s] - mb), sum_l);
  T* op = static_cast<T*>(p.out) + b * p.out_stride_b + hq * p.out_stride_h;
  for (int d = static_cast<int>(threadIdx.x); d < D; d += kCombineThreads) {
    float sum_a = 0.0f;
    for (int s = 0; s < used; ++s) sum_a = fmaf(po[s * D + d], exp2f(ml[2 * s] - mb), sum_a);
    Elem<T>::store(op + d, sum_l == 0.0f ? 0.0f : sum_a / sum_l);
  }
  if (threadIdx.x == 0 && p.lse != nullptr) {
    p.lse[b * p.lse_stride_b + hq * p.lse_stride_h] =
        sum_l == 0.0f ? -INFINITY : (mx + log2f(sum_l)) * kLn2;
  }
}

}  // namespace decode_detail
}  // namespace haic
