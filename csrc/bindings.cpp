// pybind11 module haic_kernels._C: the Python face of the torch-free CUDA kernels.
//
// Python passes integers (device pointers, sizes, strides in elements, a cudaStream_t handle);
// this layer checks them, calls the kernel's host launcher and turns a cudaError_t into a Python
// exception (ValueError for bad arguments, haic_kernels._C.CudaError for CUDA failures). It
// links the CUDA runtime statically, so importing it needs neither a GPU nor a driver.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "haic_kernels.h"

#ifndef HAIC_CUDA_ARCHS
#define HAIC_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void raise_cuda(cudaError_t err, const std::string& where) {
  throw CudaError(where + ": CUDA error " + cudaGetErrorName(err) + " (" +
                  std::to_string(static_cast<int>(err)) + "): " + cudaGetErrorString(err));
}

std::vector<std::string> compiled_archs() {
  std::vector<std::string> out;
  std::string s = HAIC_CUDA_ARCHS;
  std::size_t pos = 0;
  while (pos < s.size()) {
    std::size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    if (comma > pos) out.push_back(s.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return out;
}

// The device pointer must be device (or managed) memory on the calling thread's current device:
// a host pointer or another device's memory would fault inside the kernel, which poisons the
// whole CUDA context; checking here turns that into a ValueError.
void check_device_pointer(std::uintptr_t ptr, const char* name) {
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky; clear it so it does not leak into the next call
    raise_cuda(err, std::string("patchify_u8: cannot query ") + name);
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    throw py::value_error(std::string("patchify_u8: ") + name +
                          " is not CUDA device memory (a host pointer?)");
  }
  int current = -1;
  err = cudaGetDevice(&current);
  if (err != cudaSuccess) raise_cuda(err, "patchify_u8: cudaGetDevice");
  if (attr.type == cudaMemoryTypeDevice && attr.device != current) {
    throw py::value_error(std::string("patchify_u8: ") + name + " lives on device " +
                          std::to_string(attr.device) + " but the current device is " +
                          std::to_string(current));
  }
}

haic::DType parse_dtype(const std::string& name) {
  if (name == "float32") return haic::DType::kFloat32;
  if (name == "float16") return haic::DType::kFloat16;
  if (name == "bfloat16") return haic::DType::kBFloat16;
  throw py::value_error("patchify_u8: out_dtype must be 'float32', 'float16' or 'bfloat16', got '" +
                        name + "'");
}

void patchify_u8(std::uintptr_t frames_ptr, const std::array<std::int64_t, 4>& shape,
                 const std::array<std::int64_t, 4>& strides, std::uintptr_t out_ptr,
                 const std::string& out_dtype, std::int64_t k_pad, int patch_size,
                 const std::array<float, 3>& scale, const std::array<float, 3>& shift,
                 std::uintptr_t stream) {
  const haic::DType dtype = parse_dtype(out_dtype);
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
  check_device_pointer(frames_ptr, "frames_ptr");
  check_device_pointer(out_ptr, "out_ptr");

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

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "haic_kernels._C: torch-free CUDA kernels (pybind11). Arguments are integer device "
      "pointers, sizes, strides in elements and a cudaStream_t handle; the Python wrappers in "
      "haic_kernels.ops.* build them from tensors. Importing needs no GPU.";

  py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);

  m.def("patchify_u8", &patchify_u8, py::kw_only(), py::arg("frames_ptr"), py::arg("shape"),
        py::arg("strides"), py::arg("out_ptr"), py::arg("out_dtype"), py::arg("k_pad"),
        py::arg("patch_size"), py::arg("scale"), py::arg("shift"), py::arg("stream"),
        "uint8 frames [F,H,W,3] (shape, strides in elements, channel stride 1) -> contiguous "
        "out [F,(H/p)*(W/p),k_pad] of out_dtype ('float32'|'float16'|'bfloat16'); "
        "out[f, ph*(W/p)+pw, c*p*p+kh*p+kw] = frames[f,ph*p+kh,pw*p+kw,c]*scale[c]+shift[c] "
        "(fp32 FMA, one rounding), zero for columns >= 3*p*p. Enqueued on `stream`.");
  m.def("compiled_archs", &compiled_archs,
        "GPU architectures this module holds code for, e.g. ['sm_80', 'sm_90a'].");
  m.def(
      "cuda_runtime_version",
      [] {
        int v = 0;
        cudaRuntimeGetVersion(&v);
        return v;
      },
      "CUDA runtime version linked in (statically), e.g. 13000 for 13.0.");
  m.def(
      "cuda_driver_version",
      [] {
        int v = 0;
        if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
        return v;
      },
      "CUDA version the installed driver supports, 0 when there is no driver.");
  m.def(
      "device_count",
      [] {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) {
          cudaGetLastError();
          return 0;
        }
        return n;
      },
      "CUDA devices the runtime sees (0 without a driver or device).");
  m.attr("PATCHIFY_MAX_PATCH_SIZE") = 128;
}
