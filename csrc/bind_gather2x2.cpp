// pybind11 binding of the gather2x2 kernel (csrc/gather2x2.cu): argument checks, then the launch.
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "bind_common.h"

namespace haic::bind {

namespace {

void gather2x2(std::uintptr_t x_ptr, const std::array<std::int64_t, 3>& shape,
               const std::array<std::int64_t, 3>& strides, int elem_size, int grid,
               std::uintptr_t out_ptr, std::uintptr_t stream) {
  if (elem_size != 1 && elem_size != 2 && elem_size != 4) {
    throw py::value_error("gather2x2: elem_size must be 1, 2 or 4 bytes, got " +
                          std::to_string(elem_size));
  }
  if (grid < 2 || grid % 2 != 0) {
    throw py::value_error("gather2x2: grid must be even and >= 2, got " + std::to_string(grid));
  }
  for (int i = 0; i < 3; ++i) {
    if (shape[i] < 0 || strides[i] < 0) {
      throw py::value_error("gather2x2: x shape and strides must be non-negative");
    }
  }
  const std::int64_t gg = static_cast<std::int64_t>(grid) * grid;
  if (shape[1] != gg && shape[1] != gg + 1) {
    throw py::value_error("gather2x2: x must have grid*grid = " + std::to_string(gg) +
                          " or grid*grid + 1 tokens in dim 1, got " + std::to_string(shape[1]));
  }
  const std::int64_t rows = shape[0] * (grid / 2) * (grid / 2);
  if (rows == 0 || shape[2] == 0) return;
  if (x_ptr == 0 || out_ptr == 0) {
    throw py::value_error("gather2x2: x_ptr and out_ptr must be non-null");
  }
  check_device_pointer(x_ptr, "gather2x2", "x_ptr");
  check_device_pointer(out_ptr, "gather2x2", "out_ptr");

  haic::Gather2x2Params prm{};
  prm.x = reinterpret_cast<const void*>(x_ptr);
  prm.num_frames = shape[0];
  prm.tokens = shape[1];
  prm.channels = shape[2];
  prm.stride_f = strides[0];
  prm.stride_t = strides[1];
  prm.stride_c = strides[2];
  prm.elem_size = elem_size;
  prm.grid = grid;
  prm.out = reinterpret_cast<void*>(out_ptr);
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = haic::gather2x2(prm, reinterpret_cast<cudaStream_t>(stream));
  }
  if (err == cudaErrorInvalidValue) {
    throw py::value_error(
        "gather2x2: sizes out of the kernel's range (more than 2^31-1 output rows), or the "
        "launch was rejected as invalid");
  }
  if (err != cudaSuccess) raise_cuda(err, "gather2x2");
}

}  // namespace

void bind_gather2x2(py::module_& m) {
  m.def("gather2x2", &gather2x2, py::kw_only(), py::arg("x_ptr"), py::arg("shape"),
        py::arg("strides"), py::arg("elem_size"), py::arg("grid"), py::arg("out_ptr"),
        py::arg("stream"),
        "x [F, T, C] (T = g*g or 1+g*g with CLS first; strides in elements) -> contiguous out "
        "[F*(g/2)^2, 4C]: out[(f*(g/2)+i)*(g/2)+j, (kh*2+kw)*C+c] = x[f, T-g*g+(2i+kh)*g+2j+kw, c], "
        "bits copied (elem_size 1, 2 or 4 bytes). Enqueued on `stream`.");
}

}  // namespace haic::bind
