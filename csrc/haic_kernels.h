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

// ---- decode attention (csrc/decode_attention.cu) -------------------------------------------
// One query token per sequence against a KV cache (flash-decoding): for batch b and query head h
// (kv head g = h / (q_heads / kv_heads)), over the L_b valid keys j,
//    out[b,h,:] = sum_j softmax_j(scale * q[b,h,:] . k[b,j,g,:]) * v[b,j,g,:]
//    lse[b,h]   = log(sum_j exp(scale * q[b,h,:] . k[b,j,g,:]))     (natural log, fp32)
// L_b = 0 gives out = 0 and lse = -inf. K/V layouts, element strides (last dim contiguous):
//  - padded: k/v [B, S, Hkv, D]; L_b = seqlens_k ? clamp(seqlens_k[b], 0, S) : S;
//  - packed: k/v [Tk, Hkv, D] (k_stride_b ignored); rows cu[b] .. cu[b+1]-1, both clamped to
//    [0, Tk], so a bad cu_seqlens_k cannot read out of bounds (it gives L_b = 0 instead).
// q/out [B, Hq, D], fp16 or bf16, D in {64, 112, 128}; k/v pointers and strides 16-byte aligned.
// With num_splits > 1 the keys of each (b, kv head) are cut into num_splits chunks whose fp32
// partial results go to `workspace` (decode_attention_workspace_bytes), then combined.
struct DecodeAttentionParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;                  // nullable
  const int* seqlens_k;        // nullable; padded layout only
  const int* cu_seqlens_k;     // nullable; selects the packed layout
  DType dtype;                 // of q, k, v and out
  int batch, q_heads, kv_heads, head_dim;
  std::int64_t max_seqlen;     // S (padded) or Tk (packed)
  std::int64_t q_stride_b, q_stride_h;
  std::int64_t k_stride_b, k_stride_s, k_stride_h;
  std::int64_t v_stride_b, v_stride_s, v_stride_h;
  std::int64_t out_stride_b, out_stride_h;
  std::int64_t lse_stride_b, lse_stride_h;
  float scale;
  int num_splits;              // 1 .. kDecodeMaxSplits
  float* workspace;            // fp32, >= decode_attention_workspace_bytes; unused if 1 split
  std::int64_t workspace_bytes;
};

constexpr int kDecodeMaxSplits = 128;

// Split count that fills `num_sms` SMs (a few blocks each) without chunks under ~64 keys.
int decode_attention_num_splits(int batch, int q_heads, int kv_heads, std::int64_t max_seqlen,
                                int num_sms);
// Workspace bytes the launch needs for `num_splits` (0 when num_splits == 1).
std::int64_t decode_attention_workspace_bytes(int batch, int q_heads, int head_dim,
                                              int num_splits);
// Enqueues one or two kernels on `stream` (no allocation, no sync: CUDA-graph capturable).
// cudaErrorInvalidValue for unsupported or inconsistent arguments; nothing runs if batch == 0.
cudaError_t decode_attention(const DecodeAttentionParams& params, cudaStream_t stream);

// ---- gather2x2 (csrc/gather2x2.cu): the A operand of conv_compress ------------------------------
// x [F, T, C] (T = g*g, or 1 + g*g with a CLS row first that is skipped; strides in elements,
// any non-negative values) -> out [F*(g/2)^2, 4C] contiguous, bits copied unchanged:
//    out[(f*(g/2) + i)*(g/2) + j, (kh*2 + kw)*C + c] = x[f, T - g*g + (2i+kh)*g + 2j+kw, c]
// g even, elem_size 1, 2 or 4 bytes. 16-byte vector copies when gather2x2_vectorized().
struct Gather2x2Params {
  const void* x;
  std::int64_t num_frames, tokens, channels;
  std::int64_t stride_f, stride_t, stride_c;  // elements
  int elem_size;                              // bytes
  int grid;                                   // g
  void* out;
};

bool gather2x2_vectorized(const Gather2x2Params& params);
// Enqueues one kernel on `stream`; cudaErrorInvalidValue for inconsistent sizes or more than
// 2^31-1 output rows. Nothing is launched when the output is empty.
cudaError_t gather2x2(const Gather2x2Params& params, cudaStream_t stream);

// ---- segment_topk (csrc/token_select.cu): token-pruning selection ------------------------------
// scores float32 [T], cu_seqlens int32 [G+1] (non-decreasing, 0 .. T), k int32 [G] ->
// keep int8 [T]: in each segment [cu[g], cu[g+1]) the k[g] highest scores get 1 (ties to the
// lower index), the rest 0. Positions outside every segment are not written. No NaN scores.
// Segment bounds are clamped into [0, T] and max_seqlen only sizes the grid (blocks stride over
// longer segments), so wrong metadata never reads or writes outside the buffers.
struct SegmentTopkParams {
  const float* scores;
  const std::int32_t* cu_seqlens;
  const std::int32_t* k;
  std::int8_t* keep;
  std::int64_t num_segments;  // G
  std::int64_t max_seqlen;    // the longest segment: a launch-size hint
  std::int64_t num_tokens;    // T, the length of scores and keep
};

// Enqueues one kernel on `stream`; cudaErrorInvalidValue for inconsistent sizes (more than
// 2^31-1 segments, negative sizes). Nothing is launched when G or T is 0.
cudaError_t segment_topk(const SegmentTopkParams& params, cudaStream_t stream);

}  // namespace haic
