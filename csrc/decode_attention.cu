// Host launcher for decode attention (decode_attention.cuh has the kernels, haic_kernels.h the
// contract). Picks the heads-per-block instantiation from the GQA ratio and launches the split
// kernel, then the combine kernel when there is more than one split.
#include <climits>
#include <cmath>
#include <cstdint>

#include "decode_attention.cuh"
#include "haic_kernels.h"

namespace haic {

namespace {

using decode_detail::Layout;
using decode_detail::Shape;

// Blocks per SM the split count aims for: ~2-3 blocks fit per SM (registers), and a few more
// waves smooth out splits of unequal length. Not yet swept on a GPU.
constexpr int kBlocksPerSm = 4;
// Fewest keys per split worth a block: below ~64 rows the merge and the partial writes cost
// about as much as the keys themselves.
constexpr std::int64_t kMinChunk = 64;

int heads_per_block(int q_per_kv) {
  if (q_per_kv <= 1) return 1;
  if (q_per_kv <= 2) return 2;
  if (q_per_kv <= 4) return 4;
  return 8;
}

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

template <typename T, int D, int HPB>
cudaError_t launch_split(const DecodeAttentionParams& prm, const Layout& lay, dim3 grid,
                         cudaStream_t stream) {
  using S = Shape<D>;
  const std::size_t smem = sizeof(float) * S::kGroups * HPB * (2 + D);
  void* args[] = {const_cast<DecodeAttentionParams*>(&prm), const_cast<Layout*>(&lay)};
  return cudaLaunchKernel(
      reinterpret_cast<const void*>(&decode_detail::decode_split_kernel<T, D, HPB>), grid,
      dim3(decode_detail::kThreads), args, smem, stream);
}

template <typename T, int D>
cudaError_t launch_all(const DecodeAttentionParams& prm, cudaStream_t stream) {
  Layout lay{};
  lay.q_per_kv = prm.q_heads / prm.kv_heads;
  lay.scale_log2 = prm.scale * 1.4426950408889634f;
  lay.step = Shape<D>::kStep;
  const int hpb = heads_per_block(lay.q_per_kv);
  lay.head_groups = (lay.q_per_kv + hpb - 1) / hpb;
  const std::int64_t gy = static_cast<std::int64_t>(prm.kv_heads) * lay.head_groups;
  if (gy > 65535 || prm.batch > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(prm.num_splits), static_cast<unsigned>(gy),
                  static_cast<unsigned>(prm.batch));
  cudaError_t err = cudaErrorInvalidValue;
  switch (hpb) {
    case 1:
      err = launch_split<T, D, 1>(prm, lay, grid, stream);
      break;
    case 2:
      err = launch_split<T, D, 2>(prm, lay, grid, stream);
      break;
    case 4:
      err = launch_split<T, D, 4>(prm, lay, grid, stream);
      break;
    default:
      err = launch_split<T, D, 8>(prm, lay, grid, stream);
      break;
  }
  if (err != cudaSuccess || prm.num_splits == 1) return err;
  void* args[] = {const_cast<DecodeAttentionParams*>(&prm), &lay};
  const std::int64_t rows = static_cast<std::int64_t>(prm.batch) * prm.q_heads;
  return cudaLaunchKernel(reinterpret_cast<const void*>(&decode_detail::decode_combine_kernel<T>),
                          dim3(static_cast<unsigned>(rows)), dim3(decode_detail::kCombineThreads),
                          args, 0, stream);
}

template <typename T>
cudaError_t launch_dtype(const DecodeAttentionParams& prm, cudaStream_t stream) {
  switch (prm.head_dim) {
    case 64:
      return launch_all<T, 64>(prm, stream);
    case 112:
      return launch_all<T, 112>(prm, stream);
    case 128:
      return launch_all<T, 128>(prm, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

int decode_attention_num_splits(int batch, int q_heads, int kv_heads, std::int64_t max_seqlen,
                                int num_sms) {
  if (batch <= 0 || kv_heads <= 0 || q_heads <= 0 || q_heads % kv_heads != 0 || max_seqlen <= 0) {
    return 1;
  }
  const int r = q_heads / kv_heads;
  const int hpb = heads_per_block(r);
  const std::int64_t base =
      static_cast<std::int64_t>(batch) * kv_heads * ((r + hpb - 1) / hpb);
  const std::int64_t target = static_cast<std::int64_t>(num_sms > 0 ? num_sms : 1) * kBlocksPerSm;
  std::int64_t splits = (target + base - 1) / base;
  const std::int64_t by_len = (max_seqlen + kMinChunk - 1) / kMinChunk;
  if (splits > by_len) splits = by_len;
  if (splits > kDecodeMaxSplits) splits = kDecodeMaxSplits;
  return splits < 1 ? 1 : static_cast<int>(splits);
}

std::int64_t decode_attention_workspace_bytes(int batch, int q_heads, int head_dim,
                                              int num_splits) {
  if (num_splits <= 1 || batch <= 0 || q_heads <= 0 || head_dim <= 0) return 0;
  return static_cast<std::int64_t>(sizeof(float)) * batch * q_heads * num_splits *
         (head_dim + 2);
}

cudaError_t decode_attention(const DecodeAttentionParams& prm, cudaStream_t stream) {
  if (prm.batch < 0 || prm.q_heads <= 0 || prm.kv_heads <= 0 ||
      prm.q_heads % prm.kv_heads != 0 || prm.max_seqlen < 0 || prm.max_seqlen > INT_MAX ||
      prm.num_splits < 1 || prm.num_splits > kDecodeMaxSplits || !std::isfinite(prm.scale) ||
      (prm.seqlens_k != nullptr && prm.cu_seqlens_k != nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (prm.dtype != DType::kFloat16 && prm.dtype != DType::kBFloat16) return cudaErrorInvalidValue;
  if (prm.head_dim != 64 && prm.head_dim != 112 && prm.head_dim != 128) {
    return cudaErrorInvalidValue;
  }
  if (prm.batch == 0) return cudaSuccess;
  if (prm.q == nullptr || prm.out == nullptr ||
      (prm.max_seqlen > 0 && (prm.k == nullptr || prm.v == nullptr))) {
    return cudaErrorInvalidValue;
  }
  // 16-byte vector loads of K/V rows: every row start must be 16-byte aligned.
  const std::int64_t strides[6] = {prm.k_stride_b, prm.k_stride_s, prm.k_stride_h,
                                   prm.v_stride_b, prm.v_stride_s, prm.v_stride_h};
  for (const std::int64_t s : strides) {
    if (s % decode_detail::kVec != 0) return cudaErrorInvalidValue;
  }
  if (prm.max_seqlen > 0 && (!aligned16(prm.k) || !aligned16(prm.v))) {
    return cudaErrorInvalidValue;
  }
  if (prm.num_splits > 1 &&
      (prm.workspace == nullptr ||
       prm.workspace_bytes < decode_attention_workspace_bytes(prm.batch, prm.q_heads,
                                                              prm.head_dim, prm.num_splits))) {
    return cudaErrorInvalidValue;
  }
  if (prm.dtype == DType::kFloat16) return launch_dtype<__half>(prm, stream);
  return launch_dtype<__nv_bfloat16>(prm, stream);
}

}  // namespace haic
