// Host-emulation shim: __half on GCC's _Float16 (IEEE binary16, round-to-nearest-even).
#pragma once
#include "cuda_runtime.h"

struct __half {
  _Float16 v;
};
struct __half2 {
  __half x, y;
};
inline __half __float2half_rn(float f) { return {static_cast<_Float16>(f)}; }
inline __half2 __floats2half2_rn(float a, float b) {
  return {__float2half_rn(a), __float2half_rn(b)};
}
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
