// Host launcher for gather2x2 (see gather2x2.cuh for the kernel, haic_kernels.h for the contract).
#include <climits>
#include <cstdint>

#include "gather2x2.cuh"
#include "haic_kernels.h"

namespace haic {

namespace {

template <typename Kernel>
cudaError_t launch(Kernel kernel, const Gather2x2Params& prm, const gather2x2_detail::Layout& lay,
                   unsigned blocks, cudaStream_t stream) {
  void* args[] = {const_cast<Gather2x2Params*>(&prm),
                  const_cast<gather2x2_detail::Layout*>(&lay)};
  // cudaLaunchKernel returns this launch's status, not an earlier error left on the thread.
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(blocks),
                          dim3(gather2x2_detail::kThreads), args, 0, stream);
}

}  // namespace

bool gather2x2_vectorized(const Gather2x2Params& prm) {
  const std::int64_t es = prm.elem_size;
  return prm.stride_c == 1 && (prm.channels * es) % 16 == 0 &&
         reinterpret_cast<std::uintptr_t>(prm.x) % 16 == 0 &&
         reinterpret_cast<std::uintptr_t>(prm.out) % 16 == 0 && (prm.stride_f * es) % 16 == 0 &&
         (prm.stride_t * es) % 16 == 0;
}

cudaError_t gather2x2(const Gather2x2Params& prm, cudaStream_t stream) {
  const std::int64_t g = prm.grid;
  if (g < 2 || g % 2 != 0 || prm.num_frames < 0 || prm.channels < 0 ||
      (prm.tokens != g * g && prm.tokens != g * g + 1) || prm.stride_f < 0 || prm.stride_t < 0 ||
      prm.stride_c < 0 || (prm.elem_size != 1 && prm.elem_size != 2 && prm.elem_size != 4)) {
    return cudaErrorInvalidValue;
  }
  const std::int64_t rows = prm.num_frames * (g / 2) * (g / 2);
  if (rows == 0 || prm.channels == 0) return cudaSuccess;
  if (prm.x == nullptr || prm.out == nullptr || rows > INT_MAX) return cudaErrorInvalidValue;

  gather2x2_detail::Layout lay;
  lay.half = g / 2;
  lay.grid = g;
  lay.tok0 = prm.tokens - g * g;
  lay.c = prm.channels;
  const auto blocks = static_cast<unsigned>(rows);
  if (gather2x2_vectorized(prm)) {
    return launch(&gather2x2_detail::gather2x2_vec_kernel<uint4>, prm, lay, blocks, stream);
  }
  switch (prm.elem_size) {
    case 1:
      return launch(&gather2x2_detail::gather2x2_elem_kernel<std::uint8_t>, prm, lay, blocks,
                    stream);
    case 2:
      return launch(&gather2x2_detail::gather2x2_elem_kernel<std::uint16_t>, prm, lay, blocks,
                    stream);
    default:
      return launch(&gather2x2_detail::gather2x2_elem_kernel<std::uint32_t>, prm, lay, blocks,
                    stream);
  }
}

}  // namespace haic
