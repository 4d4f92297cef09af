// pybind11 binding of the patchify kernel (csrc/patchify.cu): argument checks, then the launch.
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "bind_common.h"

namespace haic::bind {

namespace {

void patchify_u8(std::uintptr_t frames_ptr, const std::array<std::int64_t, 4>& shape,
                 const std::array<std::int64_t, 4>& strides, std::uintptr_t out_ptr,
                 const std::string& out_dtype, std::int64_t k_pad, int patch_size,
                 const std::array<float, 3>& scale, const std::array<float, 3>& shift,
                 std::uintptr_t stream) {
  const haic::DType dtype = parse_dtype("patchify_u8", "out_dtype", out_dtype);
  if (patch_size < 1) {
    throw py::value_error("patchify_u8: patch_size must be >= 1, got " +
                          std::to_string(patch_size));
  }
  for (int i = 0; i < 4; ++i) {
    if (shape[i] < 0 || strides[i] < 0) {
      throw py::value_error("patchify_u8: frames shape and strides must be non-negative");
    }
  }
  if (shape[3] != 3) {
    throw py::value_error("patchify_u8: frames must have 3 channels in the last dim, got " +
                          std::to_string(shape[3]));
  }
  if (strides[3] != 1) {
    throw py::value_error("patchify_u8: frames channel stride must be 1, got " +
                          std::to_string(strides[3]));
  }
  if (shape[1] % patch_size != 0 || shape[2] % patch_size != 0) {
    throw py::value_error("patchify_u8: frames H and W must be multiples of patch_size");
  }
  const std::int64_t k = 3LL * patch_size * patch_size;
  if (k_pad < k) {
    throw py::value_error("patchify_u8: k_pad must be >= 3*patch_size^2 = " + std::to_string(k) +
                          ", got " + std::to_string(k_pad));
  }
  if (haic::patchify_min_smem_bytes(patch_size) > haic::kPatchifyMaxSmem) {
    throw py::value_error("patchify_u8: patch_size " + std::to_string(patch_size) +
                          " needs more than 48 KiB of shared memory per block (max 128)");
  }
  const bool empty = shape[0] == 0 || shape[1] == 0 || shape[2] == 0;
  if (empty) return;
  if (frames_ptr == 0 || out_ptr == 0) {
    throw py::value_error("patchify_u8: frames_ptr and out_ptr must be non-null");
  }
  check_device_pointer(frames_ptr, "patchify_u8", "frames_ptr");
  check_device_pointer(out_ptr, "patchify_u8", "out_ptr");

  haic::PatchifyParams prm{};
  prm.frames = reinterpret_cast<const std::uint8_t*>(frames_ptr);
  prm.num_frames = shape[0];
  prm.height = shape[1];
  prm.width = shape[2];
  prm.stride_f = strides[0];
  prm.stride_h = strides[1];
  prm.stride_w = strides[2];
  prm.patch = patch_size;
  prm.out = reinterpret_cast<void*>(out_ptr);
  prm.out_dtype = dtype;
  prm.k_pad = k_pad;
  for (int c = 0; c < 3; ++c) {
    prm.scale[c] = scale[c];
    prm.shift[c] = shift[c];
  }
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = haic::patchify_u8(prm, reinterpret_cast<cudaStream_t>(stream));
  }
  if (err == cudaErrorInvalidValue) {
    throw py::value_error(
        "patchify_u8: sizes out of the kernel's range (more than 2^31-1 blocks or "
        "patches_per_block*k_pad elements), or the launch was rejected as invalid");
  }
  if (err != cudaSuccess) raise_cuda(err, "patchify_u8");
}

}  // namespace

void bind_patchify(py::module_& m) {
  m.def("patchify_u8", &patchify_u8, py::kw_only(), py::arg("frames_ptr"), py::arg("shape"),
        py::arg("strides"), py::arg("out_ptr"), py::arg("out_dtype"), py::arg("k_pad"),
        py::arg("patch_size"), py::arg("scale"), py::arg("shift"), py::arg("stream"),
        "uint8 frames [F,H,W,3] (shape, strides in elements, channel stride 1) -> contiguous "
        "out [F,(H/p)*(W/p),k_pad] of out_dtype ('float32'|'float16'|'bfloat16'); "
        "out[f, ph*(W/p)+pw, c*p*p+kh*p+kw] = frames[f,ph*p+kh,pw*p+kw,c]*scale[c]+shift[c] "
        "(fp32 FMA, one rounding), zero for columns >= 3*p*p. Enqueued on `stream`.");
  m.attr("PATCHIFY_MAX_PATCH_SIZE") = 128;
}

}  // namespace haic::bind
