// Host-side entry points of the haic_kernels CUDA kernels.
//
// Torch-free on purpose: every kernel takes raw device pointers, sizes, strides and a
// cudaStream_t, and returns a cudaError_t. bindings.cpp (pybind11) is the only caller in this
// repo; any C++ program can link the same objects. This header has no device code, so a plain
// C++ compiler can include it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace haic {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// uint8 frames [F, H, W, 3] (channel stride 1, other strides in bytes, any non-negative value)
// -> out [F, (H/p)*(W/p), k_pad] contiguous, row (f, ph, pw), column c*p*p + kh*p + kw:
//    out = frames[f, ph*p + kh, pw*p + kw, c] * scale[c] + shift[c]   (fp32 FMA, one rounding
//    to out_dtype); columns k >= 3*p*p are written as 0.
// With scale = 1/(255*std) and shift = -mean/std this is (x/255 - mean)/std.
struct PatchifyParams {
  const std::uint8_t* frames;
  std::int64_t num_frames, height, width;
  std::int64_t stride_f, stride_h, stride_w;  // bytes
  int patch;
  void* out;
  DType out_dtype;
  std::int64_t k_pad;
  float scale[3];
  float shift[3];
};

// Shared memory one block needs for patch size p; the launcher refuses sizes above
// kPatchifyMaxSmem (the default per-block limit, no opt-in needed).
constexpr std::int64_t kPatchifyMaxSmem = 48 * 1024;
std::int64_t patchify_min_smem_bytes(int patch);

// Enqueues the kernel on `stream`. Returns cudaErrorInvalidValue for inconsistent sizes,
// otherwise the launch status. Nothing is launched when the output is empty.
cudaError_t patchify_u8(const PatchifyParams& params, cudaStream_t stream);

}  // namespace haic
