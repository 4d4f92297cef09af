// Shared helpers of the pybind11 layer (haic_kernels._C): the CudaError exception, CUDA error
// translation, device-pointer and dtype checks. Each csrc/bind_<op>.cpp defines
// `void haic::bind::bind_<op>(py::module_&)`; bindings.cpp declares and calls them.
#pragma once

#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "haic_kernels.h"

namespace haic::bind {

namespace py = pybind11;

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void raise_cuda(cudaError_t err, const std::string& where) {
  throw CudaError(where + ": CUDA error " + cudaGetErrorName(err) + " (" +
                  std::to_string(static_cast<int>(err)) + "): " + cudaGetErrorString(err));
}

// The device pointer must be device (or managed) memory on the calling thread's current device:
// a host pointer or another device's memory would fault inside the kernel, which poisons the
// whole CUDA context; checking here turns that into a ValueError.
inline void check_device_pointer(std::uintptr_t ptr, const char* op, const char* name) {
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky; clear it so it does not leak into the next call
    raise_cuda(err, std::string(op) + ": cannot query " + name);
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    throw py::value_error(std::string(op) + ": " + name +
                          " is not CUDA device memory (a host pointer?)");
  }
  int current = -1;
  err = cudaGetDevice(&current);
  if (err != cudaSuccess) raise_cuda(err, std::string(op) + ": cudaGetDevice");
  if (attr.type == cudaMemoryTypeDevice && attr.device != current) {
    throw py::value_error(std::string(op) + ": " + name + " lives on device " +
                          std::to_string(attr.device) + " but the current device is " +
                          std::to_string(current));
  }
}

inline haic::DType parse_dtype(const char* op, const char* arg, const std::string& name) {
  if (name == "float32") return haic::DType::kFloat32;
  if (name == "float16") return haic::DType::kFloat16;
  if (name == "bfloat16") return haic::DType::kBFloat16;
  throw py::value_error(std::string(op) + ": " + arg +
                        " must be 'float32', 'float16' or 'bfloat16', got '" + name + "'");
}

// One per csrc/bind_<op>.cpp, called from PYBIND11_MODULE in bindings.cpp.
void bind_patchify(py::module_& m);
void bind_gather2x2(py::module_& m);
void bind_decode_attention(py::module_& m);
void bind_token_select(py::module_& m);

}  // namespace haic::bind
