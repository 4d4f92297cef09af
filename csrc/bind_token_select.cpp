// pybind11 binding of the token-pruning selection kernel (csrc/token_select.cu).
#include <cstdint>
#include <string>

#include "bind_common.h"

namespace haic::bind {

namespace {

void segment_topk_f32(std::uintptr_t scores_ptr, std::uintptr_t cu_seqlens_ptr,
                      std::uintptr_t k_ptr, std::uintptr_t keep_ptr, std::int64_t num_segments,
                      std::int64_t max_seqlen, std::int64_t num_tokens, std::uintptr_t stream) {
  if (num_segments < 0 || max_seqlen < 0 || num_tokens < 0) {
    throw py::value_error(
        "segment_topk_f32: num_segments, max_seqlen and num_tokens must be >= 0, got " +
        std::to_string(num_segments) + ", " + std::to_string(max_seqlen) + ", " +
        std::to_string(num_tokens));
  }
  if (num_tokens > 0x7FFFFFFF) {
    throw py::value_error("segment_topk_f32: num_tokens must be < 2^31, got " +
                          std::to_string(num_tokens));
  }
  if (num_segments == 0 || num_tokens == 0) return;
  const std::uintptr_t ptrs[] = {scores_ptr, cu_seqlens_ptr, k_ptr, keep_ptr};
  const char* names[] = {"scores_ptr", "cu_seqlens_ptr", "k_ptr", "keep_ptr"};
  for (int i = 0; i < 4; ++i) {  // every argument check before the first CUDA call
    if (ptrs[i] == 0) {
      throw py::value_error(std::string("segment_topk_f32: ") + names[i] + " must be non-null");
    }
  }
  for (int i = 0; i < 4; ++i) check_device_pointer(ptrs[i], "segment_topk_f32", names[i]);
  haic::SegmentTopkParams prm{};
  prm.scores = reinterpret_cast<const float*>(scores_ptr);
  prm.cu_seqlens = reinterpret_cast<const std::int32_t*>(cu_seqlens_ptr);
  prm.k = reinterpret_cast<const std::int32_t*>(k_ptr);
  prm.keep = reinterpret_cast<std::int8_t*>(keep_ptr);
  prm.num_segments = num_segments;
  prm.max_seqlen = max_seqlen;
  prm.num_tokens = num_tokens;
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = haic::segment_topk(prm, reinterpret_cast<cudaStream_t>(stream));
  }
  if (err == cudaErrorInvalidValue) {
    throw py::value_error(
        "segment_topk_f32: sizes out of the kernel's range (more than 2^31-1 segments), or "
        "the launch was rejected as invalid");
  }
  if (err != cudaSuccess) raise_cuda(err, "segment_topk_f32");
}

}  // namespace

void bind_token_select(py::module_& m) {
  m.def("segment_topk_f32", &segment_topk_f32, py::kw_only(), py::arg("scores_ptr"),
        py::arg("cu_seqlens_ptr"), py::arg("k_ptr"), py::arg("keep_ptr"),
        py::arg("num_segments"), py::arg("max_seqlen"), py::arg("num_tokens"), py::arg("stream"),
        "scores float32 [T], cu_seqlens int32 [G+1], k int32 [G] -> keep int8 [T] (written "
        "inside the segments only): the k[g] highest of each segment, ties to the lower index. "
        "Enqueued on `stream`.");
}

}  // namespace haic::bind
