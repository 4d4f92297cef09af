// Host-emulation shim: bfloat16 as the top 16 bits of a float, round-to-nearest-even
// (finite inputs only, which is all patchify produces).
#pragma once
#include "cuda_runtime.h"

struct __nv_bfloat16 {
  std::uint16_t v;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const unsigned u = __float_as_uint(f);
  return {static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float(unsigned{h.v} << 16); }
