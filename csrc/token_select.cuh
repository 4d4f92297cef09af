// segment_topk: stable top-k inside each segment of a ragged score array, as a keep mask.
//
// keep[i] = 1 iff fewer than k[g] elements j of i's segment [cu[g], cu[g+1]) satisfy
// s[j] > s[i] or (s[j] == s[i] and j < i): the k highest scores, ties to the lower index, with
// no sort. One thread per candidate; the block stages its segment's competitors through shared
// memory kThreads at a time, so every score is read from global memory once per block. Cost
// O(n^2) per segment of n, fine for the sizes pruning uses (64 per frame, 1,584 per video).
//
// Torch-free: included only by token_select.cu; see haic_kernels.h for the entry point.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "haic_kernels.h"

namespace haic {
namespace token_select_detail {

// 256 threads: 1 KiB of staged scores per step; a 1,584-token video is 7 blocks of 7 steps.
// Not yet swept on a GPU.
constexpr int kThreads = 256;

extern __shared__ float tile[];  // kThreads scores (dynamic shared memory)

// blockIdx.x = segment g, blockIdx.y = chunk of kThreads candidates within it; the chunks stride
// by gridDim.y, so a grid sized from a too-small max_seqlen still ranks every element.
__global__ void __launch_bounds__(kThreads) segment_topk_kernel(const SegmentTopkParams prm) {
  const std::int64_t g = blockIdx.x;
  const std::int64_t t_all = prm.num_tokens;
  std::int64_t lo = prm.cu_seqlens[g];
  std::int64_t hi = prm.cu_seqlens[g + 1];
  lo = lo < 0 ? 0 : (lo > t_all ? t_all : lo);
  hi = hi < lo ? lo : (hi > t_all ? t_all : hi);
  const std::int64_t k = prm.k[g];
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.y) * kThreads;
  // Every bound below is uniform over the block: no barrier is skipped by part of it.
  for (std::int64_t first = lo + static_cast<std::int64_t>(blockIdx.y) * kThreads; first < hi;
       first += stride) {
    const std::int64_t i = first + threadIdx.x;
    const bool active = i < hi;
    if (k <= 0 || k >= hi - lo) {  // nothing or everything: no ranking needed
      if (active) prm.keep[i] = k > 0 ? 1 : 0;
      continue;
    }
    const float si = active ? prm.scores[i] : 0.0f;
    std::int64_t rank = 0;
    for (std::int64_t j0 = lo; j0 < hi; j0 += kThreads) {
      const std::int64_t j = j0 + threadIdx.x;
      tile[threadIdx.x] = j < hi ? prm.scores[j] : 0.0f;
      __syncthreads();
      const std::int64_t n = hi - j0 < kThreads ? hi - j0 : kThreads;
      for (std::int64_t t = 0; t < n; ++t) {
        const float sj = tile[t];
        rank += (sj > si) || (sj == si && j0 + t < i);
      }
      __syncthreads();
    }
    if (active) prm.keep[i] = rank < k ? 1 : 0;
  }
}

}  // namespace token_select_detail
}  // namespace haic
