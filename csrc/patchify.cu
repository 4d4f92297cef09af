// Host launcher for patchify (see patchify.cuh for the kernel, haic_kernels.h for the contract).
#include <climits>
#include <cstdint>

#include "haic_kernels.h"
#include "patchify.cuh"

namespace haic {

namespace {

constexpr std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

// Patches per block: a whole patch row when it fits kTileBudget; otherwise as many as fit,
// rounded down to a multiple of 16 when possible so that every tile starts 16-byte aligned
// (16 patches = 48*p bytes).
std::int64_t tile_patches_for(std::int64_t p, std::int64_t pw) {
  const std::int64_t fit = patchify_detail::kTileBudget / (p * p * 3);
  if (fit >= pw) return pw;
  if (fit >= 16) return fit - fit % 16;
  return fit > 1 ? fit : 1;
}

template <typename T>
cudaError_t launch(const PatchifyParams& prm, const patchify_detail::Layout& lay,
                   unsigned blocks, std::size_t smem, cudaStream_t stream) {
  void* args[] = {const_cast<PatchifyParams*>(&prm),
                  const_cast<patchify_detail::Layout*>(&lay)};
  // cudaLaunchKernel returns this launch's status; <<<>>> + cudaGetLastError could also
  // report an unrelated earlier error left on the thread by another library.
  return cudaLaunchKernel(reinterpret_cast<const void*>(&patchify_detail::patchify_u8_kernel<T>),
                          dim3(blocks), dim3(patchify_detail::kThreads), args, smem, stream);
}

}  // namespace

std::int64_t patchify_min_smem_bytes(int patch) {
  return static_cast<std::int64_t>(patch) * round_up(static_cast<std::int64_t>(patch) * 3, 16);
}

cudaError_t patchify_u8(const PatchifyParams& prm, cudaStream_t stream) {
  const std::int64_t p = prm.patch;
  if (p < 1 || prm.num_frames < 0 || prm.height < 0 || prm.width < 0 || prm.height % p != 0 ||
      prm.width % p != 0 || prm.stride_f < 0 || prm.stride_h < 0 || prm.stride_w < 0 ||
      prm.k_pad < 3 * p * p || prm.k_pad > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  const std::int64_t ph = prm.height / p;
  const std::int64_t pw = prm.width / p;
  if (prm.num_frames == 0 || ph == 0 || pw == 0) return cudaSuccess;
  if (prm.frames == nullptr || prm.out == nullptr) return cudaErrorInvalidValue;

  const std::int64_t tile_patches = tile_patches_for(p, pw);
  const std::int64_t tiles_w = (pw + tile_patches - 1) / tile_patches;
  const std::int64_t smem_row = round_up(tile_patches * p * 3, 16);
  const std::int64_t smem = p * smem_row;
  const std::int64_t blocks = prm.num_frames * ph * tiles_w;
  if (smem > kPatchifyMaxSmem || blocks > INT_MAX || tile_patches * prm.k_pad > INT_MAX ||
      ph > INT_MAX || pw > INT_MAX) {
    return cudaErrorInvalidValue;
  }

  patchify_detail::Layout lay;
  lay.patch = static_cast<int>(p);
  lay.k = static_cast<int>(3 * p * p);
  lay.k_pad = static_cast<int>(prm.k_pad);
  lay.ph_count = static_cast<int>(ph);
  lay.pw_count = static_cast<int>(pw);
  lay.tiles_w = static_cast<int>(tiles_w);
  lay.tile_patches = static_cast<int>(tile_patches);
  lay.smem_row = static_cast<int>(smem_row);
  // Every staged row starts at frames + f*stride_f + row*stride_h + tile*np*p*3: all 16-byte
  // aligned when these are (a crop view usually is not, and takes the byte-load path).
  lay.vec_in = prm.stride_w == 3 && aligned16(prm.frames) && prm.stride_f % 16 == 0 &&
               prm.stride_h % 16 == 0 && (tiles_w == 1 || (tile_patches * p * 3) % 16 == 0);
  lay.vec_out = aligned16(prm.out);

  const auto n_blocks = static_cast<unsigned>(blocks);
  const auto smem_bytes = static_cast<std::size_t>(smem);
  switch (prm.out_dtype) {
    case DType::kFloat32:
      return launch<float>(prm, lay, n_blocks, smem_bytes, stream);
    case DType::kFloat16:
      return launch<__half>(prm, lay, n_blocks, smem_bytes, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(prm, lay, n_blocks, smem_bytes, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace haic
