// Host emulation of the segment_topk CUDA kernel, for machines without a GPU (CI).
//
// g++ compiles csrc/token_select.cu and token_select.cuh unchanged against the shim headers in
// include/; each block runs its threads as std::threads with a std::barrier for __syncthreads.
// Checks against a plain host loop (sort by (score desc, index asc), keep the first k): ragged
// and empty segments, segments longer than one block and one tile, many ties, +-inf, k = 0,
// k = n, k > n, and that positions outside the segments are not written; then the same with a
// max_seqlen far below the longest segment (a launch hint: every element is still ranked) and
// with segment bounds that lie past the buffers (clamped: nothing outside is touched).
//
//   g++ -std=c++20 -O1 -pthread -Icsrc/emu/include -Icsrc -x c++ csrc/token_select.cu
//       -x c++ csrc/emu/token_select_emu.cpp -o token_select_emu && ./token_select_emu
#include <algorithm>
#include <barrier>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "haic_kernels.h"
// token_select.cuh is compiled in token_select.cu; here only the shared-memory array it declares.

thread_local emu_uint3 threadIdx;
thread_local emu_uint3 blockIdx;
thread_local emu_uint3 gridDim;
static std::barrier<>* g_block_barrier = nullptr;
void __syncthreads() { g_block_barrier->arrive_and_wait(); }

namespace haic::token_select_detail {
float tile[1024];  // the kernel's `extern __shared__` array
}

cudaError_t cudaLaunchKernel(const void* func, dim3 grid, dim3 block, void** args,
                             std::size_t smem, cudaStream_t) {
  using Kernel = void (*)(haic::SegmentTopkParams);
  auto kernel = reinterpret_cast<Kernel>(const_cast<void*>(func));
  const auto prm = *static_cast<haic::SegmentTopkParams*>(args[0]);
  if (smem > sizeof(haic::token_select_detail::tile) || grid.z != 1) return 98;
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::fill(std::begin(haic::token_select_detail::tile),
                std::end(haic::token_select_detail::tile), std::nanf(""));
      std::barrier<> bar(block.x);
      g_block_barrier = &bar;
      std::vector<std::thread> threads;
      threads.reserve(block.x);
      for (unsigned t = 0; t < block.x; ++t) {
        threads.emplace_back([&, t, bx, by] {
          threadIdx = {t, 0, 0};
          blockIdx = {bx, by, 0};
          gridDim = {grid.x, grid.y, grid.z};
          kernel(prm);
        });
      }
      for (auto& th : threads) th.join();
    }
  }
  return cudaSuccess;
}

int main() {
  std::mt19937 rng(1234);
  const std::vector<int> lens = {0, 1, 5, 300, 64, 3, 257, 0, 600};
  const std::vector<int> ks = {0, 1, 2, 100, 64, 5, 1, 0, 599};
  std::vector<std::int32_t> cu = {0};
  for (int n : lens) cu.push_back(cu.back() + n);
  const int total = cu.back() + 7;  // 7 trailing positions outside every segment
  std::vector<float> s(total);
  std::uniform_int_distribution<int> few(0, 5);  // few distinct values: many ties
  for (auto& v : s) v = static_cast<float>(few(rng));
  s[10] = std::numeric_limits<float>::infinity();
  s[11] = -std::numeric_limits<float>::infinity();
  std::vector<std::int32_t> k(ks.begin(), ks.end());
  std::vector<std::int8_t> keep(total, 7);
  int max_len = *std::max_element(lens.begin(), lens.end());
  haic::SegmentTopkParams prm{s.data(), cu.data(), k.data(), keep.data(),
                              static_cast<std::int64_t>(lens.size()), max_len, total};
  int failed = 0;
  for (const std::int64_t hint : {static_cast<std::int64_t>(max_len), std::int64_t{1}}) {
  std::fill(keep.begin(), keep.end(), 7);
  prm.max_seqlen = hint;
  if (haic::segment_topk(prm, nullptr) != cudaSuccess) ++failed;
  for (std::size_t g = 0; g < lens.size(); ++g) {
    std::vector<int> idx(lens[g]);
    std::iota(idx.begin(), idx.end(), cu[g]);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return s[a] > s[b]; });
    std::vector<std::int8_t> want(lens[g], 0);
    for (int r = 0; r < std::min(ks[g], lens[g]); ++r) want[idx[r] - cu[g]] = 1;
    for (int i = 0; i < lens[g]; ++i) {
      if (keep[cu[g] + i] != want[i]) {
        if (failed < 10) std::printf("segment %zu index %d: got %d want %d\n", g, i,
                                     keep[cu[g] + i], want[i]);
        ++failed;
      }
    }
  }
  for (int i = cu.back(); i < total; ++i) failed += keep[i] != 7;  // untouched
  }
  // Bounds that lie: a segment past T and a decreasing pair. Only [0, T) may be written.
  std::vector<std::int32_t> lying = {0, 5, 3, 1 << 30};
  std::vector<std::int32_t> k2 = {2, 1, 4};
  std::vector<std::int8_t> guarded(total + 64, 7);
  haic::SegmentTopkParams liar{s.data(), lying.data(), k2.data(), guarded.data(), 3, 2, total};
  if (haic::segment_topk(liar, nullptr) != cudaSuccess) ++failed;
  for (int i = total; i < total + 64; ++i) failed += guarded[i] != 7;  // past T: untouched
  haic::SegmentTopkParams bad = prm;
  bad.num_segments = -1;
  failed += haic::segment_topk(bad, nullptr) != cudaErrorInvalidValue;
  std::printf("segment_topk emulation: %d failed\n", failed);
  return failed ? 1 : 0;
}
