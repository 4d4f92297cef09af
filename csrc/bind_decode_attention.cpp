// pybind11 binding of the decode-attention kernels (csrc/decode_attention.cu): argument checks
// (all before any CUDA call, so they are testable without a GPU), then the launch.
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <string>

#include "bind_common.h"

namespace haic::bind {

namespace {

constexpr const char* kOp = "decode_attention";

[[noreturn]] void bad(const std::string& msg) {
  throw py::value_error(std::string(kOp) + ": " + msg);
}

void check_aligned(const char* name, std::uintptr_t ptr, const std::array<std::int64_t, 3>& st) {
  if (ptr % 16 != 0) bad(std::string(name) + "_ptr must be 16-byte aligned (vector loads)");
  for (const std::int64_t s : st) {
    if (s < 0 || s % 8 != 0) {
      bad(std::string(name) + "_strides must be non-negative multiples of 8 elements (16-byte "
                               "aligned rows), got " +
          std::to_string(s));
    }
  }
}

void decode_attention(std::uintptr_t q_ptr, std::uintptr_t k_ptr, std::uintptr_t v_ptr,
                      std::uintptr_t out_ptr, std::uintptr_t lse_ptr, std::uintptr_t seqlens_ptr,
                      std::uintptr_t cu_seqlens_ptr, const std::string& dtype, int batch,
                      int q_heads, int kv_heads, int head_dim, std::int64_t max_seqlen,
                      const std::array<std::int64_t, 2>& q_strides,
                      const std::array<std::int64_t, 3>& k_strides,
                      const std::array<std::int64_t, 3>& v_strides,
                      const std::array<std::int64_t, 2>& out_strides,
                      const std::array<std::int64_t, 2>& lse_strides, double scale,
                      int num_splits, std::uintptr_t workspace_ptr,
                      std::int64_t workspace_bytes, std::uintptr_t stream) {
  const haic::DType dt = parse_dtype(kOp, "dtype", dtype);
  if (dt == haic::DType::kFloat32) bad("dtype must be 'float16' or 'bfloat16', got 'float32'");
  if (batch < 0) bad("batch must be >= 0, got " + std::to_string(batch));
  if (q_heads < 1 || kv_heads < 1) bad("q_heads and kv_heads must be >= 1");
  if (q_heads % kv_heads != 0) {
    bad("q_heads (" + std::to_string(q_heads) + ") must be a multiple of kv_heads (" +
        std::to_string(kv_heads) + ")");
  }
  if (head_dim != 64 && head_dim != 112 && head_dim != 128) {
    bad("head_dim must be 64, 112 or 128, got " + std::to_string(head_dim));
  }
  if (max_seqlen < 0 || max_seqlen > INT32_MAX) {
    bad("max_seqlen must be in [0, 2^31-1], got " + std::to_string(max_seqlen));
  }
  if (!std::isfinite(scale)) bad("scale must be finite");
  if (seqlens_ptr != 0 && cu_seqlens_ptr != 0) {
    bad("seqlens_ptr and cu_seqlens_ptr are exclusive (padded or packed K/V)");
  }
  if (num_splits < 1 || num_splits > haic::kDecodeMaxSplits) {
    bad("num_splits must be in [1, " + std::to_string(haic::kDecodeMaxSplits) + "], got " +
        std::to_string(num_splits));
  }
  if (batch > 65535) bad("batch must be <= 65535 (grid z), got " + std::to_string(batch));
  if (q_strides[0] < 0 || q_strides[1] < 0) bad("q_strides must be non-negative");
  if (out_strides[0] < 0 || out_strides[1] < 0) bad("out_strides must be non-negative");
  if (lse_strides[0] < 0 || lse_strides[1] < 0) bad("lse_strides must be non-negative");
  const std::int64_t need =
      haic::decode_attention_workspace_bytes(batch, q_heads, head_dim, num_splits);
  if (workspace_bytes < need) {
    bad("workspace_bytes must be >= " + std::to_string(need) + " for " +
        std::to_string(num_splits) + " splits, got " + std::to_string(workspace_bytes));
  }
  if (batch == 0) return;
  if (q_ptr == 0 || out_ptr == 0) bad("q_ptr and out_ptr must be non-null");
  const bool has_keys = max_seqlen > 0;
  if (has_keys && (k_ptr == 0 || v_ptr == 0)) bad("k_ptr and v_ptr must be non-null");
  if (need > 0 && workspace_ptr == 0) bad("workspace_ptr must be non-null with num_splits > 1");
  if (has_keys) {
    check_aligned("k", k_ptr, k_strides);
    check_aligned("v", v_ptr, v_strides);
  }

  check_device_pointer(q_ptr, kOp, "q_ptr");
  check_device_pointer(out_ptr, kOp, "out_ptr");
  if (has_keys) {
    check_device_pointer(k_ptr, kOp, "k_ptr");
    check_device_pointer(v_ptr, kOp, "v_ptr");
  }
  if (lse_ptr != 0) check_device_pointer(lse_ptr, kOp, "lse_ptr");
  if (seqlens_ptr != 0) check_device_pointer(seqlens_ptr, kOp, "seqlens_ptr");
  if (cu_seqlens_ptr != 0) check_device_pointer(cu_seqlens_ptr, kOp, "cu_seqlens_ptr");
  if (need > 0) check_device_pointer(workspace_ptr, kOp, "workspace_ptr");

  haic::DecodeAttentionParams prm{};
  prm.q = reinterpret_cast<const void*>(q_ptr);
  prm.k = reinterpret_cast<const void*>(k_ptr);
  prm.v = reinterpret_cast<const void*>(v_ptr);
  prm.out = reinterpret_cast<void*>(out_ptr);
  prm.lse = reinterpret_cast<float*>(lse_ptr);
  prm.seqlens_k = reinterpret_cast<const int*>(seqlens_ptr);
  prm.cu_seqlens_k = reinterpret_cast<const int*>(cu_seqlens_ptr);
  prm.dtype = dt;
  prm.batch = batch;
  prm.q_heads = q_heads;
  prm.kv_heads = kv_heads;
  prm.head_dim = head_dim;
  prm.max_seqlen = max_seqlen;
  prm.q_stride_b = q_strides[0];
  prm.q_stride_h = q_strides[1];
  prm.k_stride_b = k_strides[0];
  prm.k_stride_s = k_strides[1];
  prm.k_stride_h = k_strides[2];
  prm.v_stride_b = v_strides[0];
  prm.v_stride_s = v_strides[1];
  prm.v_stride_h = v_strides[2];
  prm.out_stride_b = out_strides[0];
  prm.out_stride_h = out_strides[1];
  prm.lse_stride_b = lse_strides[0];
  prm.lse_stride_h = lse_strides[1];
  prm.scale = static_cast<float>(scale);
  prm.num_splits = num_splits;
  prm.workspace = reinterpret_cast<float*>(workspace_ptr);
  prm.workspace_bytes = workspace_bytes;
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = haic::decode_attention(prm, reinterpret_cast<cudaStream_t>(stream));
  }
  if (err == cudaErrorInvalidValue) {
    bad("the launch was rejected as invalid (grid too large: kv_heads * ceil(r/8) > 65535?)");
  }
  if (err != cudaSuccess) raise_cuda(err, kOp);
}

}  // namespace

void bind_decode_attention(py::module_& m) {
  m.def("decode_attention", &decode_attention, py::kw_only(), py::arg("q_ptr"), py::arg("k_ptr"),
        py::arg("v_ptr"), py::arg("out_ptr"), py::arg("lse_ptr"), py::arg("seqlens_ptr"),
        py::arg("cu_seqlens_ptr"), py::arg("dtype"), py::arg("batch"), py::arg("q_heads"),
        py::arg("kv_heads"), py::arg("head_dim"), py::arg("max_seqlen"), py::arg("q_strides"),
        py::arg("k_strides"), py::arg("v_strides"), py::arg("out_strides"),
        py::arg("lse_strides"), py::arg("scale"), py::arg("num_splits"),
        py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("stream"),
        "One query token per sequence against a KV cache (flash-decoding, GQA-packed). q/out "
        "[B,Hq,D] (strides (b,h) in elements), k/v padded [B,S,Hkv,D] (strides (b,s,h); "
        "max_seqlen=S, optional int32 seqlens_ptr [B]) or packed [Tk,Hkv,D] (cu_seqlens_ptr "
        "int32 [B+1], max_seqlen=Tk, stride b unused); dtype 'float16'|'bfloat16', D in "
        "{64,112,128}. out = softmax(scale q.k) v over the valid keys; optional fp32 lse [B,Hq] "
        "(natural log); no keys -> out 0, lse -inf. num_splits > 1 needs a workspace of "
        "decode_attention_workspace_bytes(...). Enqueued on `stream`; no allocation.");
  m.def("decode_attention_num_splits", &haic::decode_attention_num_splits, py::kw_only(),
        py::arg("batch"), py::arg("q_heads"), py::arg("kv_heads"), py::arg("max_seqlen"),
        py::arg("num_sms"),
        "Split count for decode_attention that fills num_sms SMs (chunks of >= 64 keys).");
  m.def("decode_attention_workspace_bytes", &haic::decode_attention_workspace_bytes,
        py::kw_only(), py::arg("batch"), py::arg("q_heads"), py::arg("head_dim"),
        py::arg("num_splits"), "fp32 workspace bytes decode_attention needs (0 for one split).");
  m.attr("DECODE_ATTENTION_MAX_SPLITS") = haic::kDecodeMaxSplits;
}

}  // namespace haic::bind
