// Host launcher for segment_topk (see token_select.cuh for the kernel, haic_kernels.h for the
// contract).
#include <cstdint>

#include "haic_kernels.h"
#include "token_select.cuh"

namespace haic {

cudaError_t segment_topk(const SegmentTopkParams& prm, cudaStream_t stream) {
  using token_select_detail::kThreads;
  if (prm.num_segments < 0 || prm.max_seqlen < 0 || prm.num_tokens < 0) {
    return cudaErrorInvalidValue;
  }
  if (prm.num_segments == 0 || prm.num_tokens == 0) return cudaSuccess;
  // The grid is a hint sized from max_seqlen (at least one chunk, capped at T and at the grid's
  // y limit): blocks stride over whatever it does not cover.
  std::int64_t longest = prm.max_seqlen < 1 ? 1 : prm.max_seqlen;
  if (longest > prm.num_tokens) longest = prm.num_tokens;
  std::int64_t chunks = (longest + kThreads - 1) / kThreads;
  if (chunks > 65535) chunks = 65535;
  if (prm.num_segments > 0x7FFFFFFF) return cudaErrorInvalidValue;
  if (!prm.scores || !prm.cu_seqlens || !prm.k || !prm.keep) return cudaErrorInvalidValue;
  void* args[] = {const_cast<SegmentTopkParams*>(&prm)};
  return cudaLaunchKernel(reinterpret_cast<const void*>(&token_select_detail::segment_topk_kernel),
                          dim3(static_cast<unsigned>(prm.num_segments),
                               static_cast<unsigned>(chunks)),
                          dim3(kThreads), args, kThreads * sizeof(float), stream);
}

}  // namespace haic
