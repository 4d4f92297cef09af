// patchify: uint8 frames [F, H, W, 3] -> normalized patch rows [F, (H/p)*(W/p), k_pad].
//
// Memory-bound. One thread block owns a run of up to `tile_patches` neighbouring patches of one
// patch row: it stages their p pixel rows (p x np*p*3 bytes) in shared memory with coalesced
// loads (16-byte when the rows are aligned), then writes the block's output, which is one
// contiguous span of np*k_pad elements, as 16-byte vectors (scalar head/tail where the span
// does not start on a 16-byte boundary). Each output element costs one shared-memory byte load
// and one FMA; the (c, kh, kw) index is advanced incrementally inside a vector, so there is one
// integer division per 16 bytes written, not per element.
//
// Torch-free: included only by patchify.cu; see haic_kernels.h for the entry point.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "haic_kernels.h"

namespace haic {
namespace patchify_detail {

// 256 threads: a 224x224 frame with p=14 gives 16 patches per patch row, i.e. 9408 staged bytes
// and 1184 16-byte bf16 output vectors per block (~4.6 per thread). Not yet swept on a GPU.
constexpr int kThreads = 256;
// Staged input per block. 12 KiB keeps a whole 224-wide patch row (9408 B at p=14) in one block
// while leaving room for ~16 resident blocks per SM under the 227 KiB Hopper shared memory.
constexpr int kTileBudget = 12 * 1024;

struct Layout {
  int patch;         // p
  int k;             // 3*p*p
  int k_pad;         // row length of out
  int ph_count;      // H/p
  int pw_count;      // W/p
  int tiles_w;       // blocks per patch row
  int tile_patches;  // patches per block (the last block of a patch row may have fewer)
  int smem_row;      // bytes per staged pixel row, a multiple of 16
  bool vec_in;       // 16-byte global loads are aligned (see patchify.cu)
  bool vec_out;      // out is 16-byte aligned
};

template <typename T>
struct Pack;  // 16 bytes of T from floats, element 0 at the lowest address

template <>
struct Pack<float> {
  static constexpr int kVec = 4;
  __device__ __forceinline__ static uint4 pack(const float (&v)[kVec]) {
    return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                      __float_as_uint(v[3]));
  }
  __device__ __forceinline__ static float one(float x) { return x; }
};

template <typename Pair, Pair (*Convert)(float, float)>
__device__ __forceinline__ unsigned pair_bits(float a, float b) {
  const Pair h = Convert(a, b);  // a -> low half (.x), b -> high half (.y)
  unsigned u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

__device__ __forceinline__ __half2 to_half2(float a, float b) { return __floats2half2_rn(a, b); }
__device__ __forceinline__ __nv_bfloat162 to_bf162(float a, float b) {
  return __floats2bfloat162_rn(a, b);
}

template <>
struct Pack<__half> {
  static constexpr int kVec = 8;
  __device__ __forceinline__ static uint4 pack(const float (&v)[kVec]) {
    return make_uint4(pair_bits<__half2, to_half2>(v[0], v[1]),
                      pair_bits<__half2, to_half2>(v[2], v[3]),
                      pair_bits<__half2, to_half2>(v[4], v[5]),
                      pair_bits<__half2, to_half2>(v[6], v[7]));
  }
  __device__ __forceinline__ static __half one(float x) { return __float2half_rn(x); }
};

template <>
struct Pack<__nv_bfloat16> {
  static constexpr int kVec = 8;
  __device__ __forceinline__ static uint4 pack(const float (&v)[kVec]) {
    return make_uint4(pair_bits<__nv_bfloat162, to_bf162>(v[0], v[1]),
                      pair_bits<__nv_bfloat162, to_bf162>(v[2], v[3]),
                      pair_bits<__nv_bfloat162, to_bf162>(v[4], v[5]),
                      pair_bits<__nv_bfloat162, to_bf162>(v[6], v[7]));
  }
  __device__ __forceinline__ static __nv_bfloat16 one(float x) { return __float2bfloat16_rn(x); }
};

// Normalized value of staged pixel (patch j of the tile, channel c, row kh, column kw).
// Selects instead of prm.scale[c]: a run-time index into a parameter array spills it to local
// memory.
__device__ __forceinline__ float normalized(const std::uint8_t* tile, const PatchifyParams& prm,
                                            const Layout& lay, int j, int c, int kh, int kw) {
  const float x = static_cast<float>(tile[kh * lay.smem_row + (j * lay.patch + kw) * 3 + c]);
  const float s = c == 0 ? prm.scale[0] : (c == 1 ? prm.scale[1] : prm.scale[2]);
  const float b = c == 0 ? prm.shift[0] : (c == 1 ? prm.shift[1] : prm.shift[2]);
  return fmaf(x, s, b);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    patchify_u8_kernel(const PatchifyParams prm, const Layout lay) {
  extern __shared__ __align__(16) std::uint8_t tile[];
  const int p = lay.patch;

  std::int64_t b = blockIdx.x;
  const int tw = static_cast<int>(b % lay.tiles_w);
  b /= lay.tiles_w;
  const int ph = static_cast<int>(b % lay.ph_count);
  const std::int64_t f = b / lay.ph_count;
  const int pw0 = tw * lay.tile_patches;
  const int np = min(lay.tile_patches, lay.pw_count - pw0);
  const int row_bytes = np * p * 3;

  // Stage p pixel rows of np patches: tile[kh * smem_row + x*3 + c].
  const std::uint8_t* src = prm.frames + f * prm.stride_f +
                            static_cast<std::int64_t>(ph) * p * prm.stride_h +
                            static_cast<std::int64_t>(pw0) * p * prm.stride_w;
  if (lay.vec_in) {  // pixels contiguous (stride_w == 3) and every row start 16-byte aligned
    const int nvec = row_bytes / 16;
    for (int i = threadIdx.x; i < p * nvec; i += kThreads) {
      const int kh = i / nvec;
      const int v = i - kh * nvec;
      const uint4 val = __ldg(reinterpret_cast<const uint4*>(src + kh * prm.stride_h) + v);
      *reinterpret_cast<uint4*>(tile + kh * lay.smem_row + 16 * v) = val;
    }
    const int tail = row_bytes - nvec * 16;
    for (int i = threadIdx.x; i < p * tail; i += kThreads) {
      const int kh = i / tail;
      const int t = nvec * 16 + (i - kh * tail);
      tile[kh * lay.smem_row + t] = __ldg(src + kh * prm.stride_h + t);
    }
  } else {
    for (int i = threadIdx.x; i < p * row_bytes; i += kThreads) {
      const int kh = i / row_bytes;
      const int rem = i - kh * row_bytes;
      const int x = rem / 3;
      const int c = rem - 3 * x;
      tile[kh * lay.smem_row + rem] = __ldg(src + kh * prm.stride_h + x * prm.stride_w + c);
    }
  }
  __syncthreads();

  // The block's output rows (f, ph, pw0 .. pw0+np) are one contiguous span of n elements.
  const std::int64_t row0 =
      (f * lay.ph_count + ph) * static_cast<std::int64_t>(lay.pw_count) + pw0;
  const std::int64_t start = row0 * lay.k_pad;
  const int n = np * lay.k_pad;
  T* out = static_cast<T*>(prm.out) + start;
  constexpr int kVec = Pack<T>::kVec;
  const int pp = p * p;

  auto write_one = [&](int e) {
    const int j = e / lay.k_pad;
    const int k = e - j * lay.k_pad;
    float y = 0.0f;
    if (k < lay.k) {
      const int c = k / pp;
      const int r = k - c * pp;
      const int kh = r / p;
      y = normalized(tile, prm, lay, j, c, kh, r - kh * p);
    }
    out[e] = Pack<T>::one(y);
  };

  const int misalign = static_cast<int>(start % kVec);
  const int head = lay.vec_out ? min(n, (kVec - misalign) % kVec) : n;
  for (int e = threadIdx.x; e < head; e += kThreads) write_one(e);

  const int nv = (n - head) / kVec;
  for (int v = threadIdx.x; v < nv; v += kThreads) {
    const int e0 = head + v * kVec;
    int j = e0 / lay.k_pad;
    int k = e0 - j * lay.k_pad;
    int c = k / pp;
    int kh = (k - c * pp) / p;
    int kw = k - c * pp - kh * p;
    float vals[kVec];
#pragma unroll
    for (int u = 0; u < kVec; ++u) {
      vals[u] = k < lay.k ? normalized(tile, prm, lay, j, c, kh, kw) : 0.0f;
      ++k;
      if (++kw == p) {
        kw = 0;
        if (++kh == p) {
          kh = 0;
          ++c;
        }
      }
      if (k == lay.k_pad) {
        k = c = kh = kw = 0;
        ++j;
      }
    }
    *reinterpret_cast<uint4*>(out + e0) = Pack<T>::pack(vals);
  }

  for (int e = head + nv * kVec + threadIdx.x; e < n; e += kThreads) write_one(e);
}

}  // namespace patchify_detail
}  // namespace haic
