// gather2x2: the A operand of the 2x2 stride-2 token conv, [F*(g/2)^2, 4C] in (kh, kw, c) order.
//
// Memory-bound copy. One thread block per output row m = (f, i, j): it copies the four C-wide
// input rows (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1) of frame f into the row's four
// segments. When every source row and the output are 16-byte aligned and C*elem_size is a
// multiple of 16 (the model: C = 1792 bf16, 3584 B) each thread moves uint4 vectors; otherwise
// one element at a time (any element strides, e.g. a channel-strided view).
//
// Torch-free: included only by gather2x2.cu; see haic_kernels.h for the entry point.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "haic_kernels.h"

namespace haic {
namespace gather2x2_detail {

// 256 threads: a full-size row is 4 * 3584 B = 896 uint4, 3.5 per thread, all independent.
// Not yet swept on a GPU.
constexpr int kThreads = 256;

struct Layout {
  std::int64_t half;  // g/2
  std::int64_t grid;  // g
  std::int64_t tok0;  // first grid token: 1 with CLS, else 0
  std::int64_t c;     // channels
};

// Element offset (in x) of tap `s` = kh*2 + kw of output row m.
__device__ __forceinline__ std::int64_t source_row(const Gather2x2Params& prm, const Layout& lay,
                                                   std::int64_t m, int s) {
  const std::int64_t f = m / (lay.half * lay.half);
  const std::int64_t ij = m - f * lay.half * lay.half;
  const std::int64_t i = ij / lay.half;
  const std::int64_t j = ij - i * lay.half;
  const std::int64_t t = lay.tok0 + (2 * i + (s >> 1)) * lay.grid + 2 * j + (s & 1);
  return f * prm.stride_f + t * prm.stride_t;
}

// Vector path (V = uint4): channel stride 1, every row 16-byte aligned, C*elem_size a multiple
// of 16. A template only so that the header can be included by more than one translation unit.
template <typename V>
__global__ void __launch_bounds__(kThreads)
    gather2x2_vec_kernel(const Gather2x2Params prm, const Layout lay) {
  const std::int64_t m = blockIdx.x;
  const std::int64_t vps = lay.c * prm.elem_size / sizeof(V);  // vectors per segment
  const auto* x = static_cast<const std::uint8_t*>(prm.x);
  auto* out = reinterpret_cast<V*>(static_cast<std::uint8_t*>(prm.out) + m * 4 * vps * sizeof(V));
  for (std::int64_t v = threadIdx.x; v < 4 * vps; v += kThreads) {
    const int s = static_cast<int>(v / vps);
    const std::int64_t u = v - s * vps;
    const auto* src =
        reinterpret_cast<const V*>(x + source_row(prm, lay, m, s) * prm.elem_size);
    out[v] = __ldg(src + u);
  }
}

// Element path, T an unsigned integer of the element's size (bits are copied, not converted).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gather2x2_elem_kernel(const Gather2x2Params prm, const Layout lay) {
  const std::int64_t m = blockIdx.x;
  const auto* x = static_cast<const T*>(prm.x);
  T* out = static_cast<T*>(prm.out) + m * 4 * lay.c;
  for (std::int64_t e = threadIdx.x; e < 4 * lay.c; e += kThreads) {
    const int s = static_cast<int>(e / lay.c);
    const std::int64_t ch = e - s * lay.c;
    out[e] = x[source_row(prm, lay, m, s) + ch * prm.stride_c];
  }
}

}  // namespace gather2x2_detail
}  // namespace haic
