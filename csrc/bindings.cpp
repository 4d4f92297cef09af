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

#include "bind_common.h"

#ifndef HAIC_CUDA_ARCHS
#define HAIC_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "haic_kernels._C: torch-free CUDA kernels (pybind11). Arguments are integer device "
      "pointers, sizes, strides in elements and a cudaStream_t handle; the Python wrappers in "
      "haic_kernels.ops.* build them from tensors. Importing needs no GPU.";

  py::register_exception<haic::bind::CudaError>(m, "CudaError", PyExc_RuntimeError);

  haic::bind::bind_patchify(m);
  haic::bind::bind_gather2x2(m);
  haic::bind::bind_decode_attention(m);
  haic::bind::bind_token_select(m);
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
}
