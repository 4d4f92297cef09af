// Host-emulation shim: device qualifiers vanish, threadIdx/blockIdx/gridDim are thread-locals set
// by the emulated launch, __syncthreads is a std::barrier across the block's std::threads.
#pragma once
#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__
#define __align__(n)

struct emu_uint3 {
  unsigned x, y, z;
};
extern thread_local emu_uint3 threadIdx;
extern thread_local emu_uint3 blockIdx;
extern thread_local emu_uint3 gridDim;  // defined by the drivers whose kernels read it
void __syncthreads();

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
struct float2 {
  float x, y;
};
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Defined by the emulation driver that uses it (a per-warp exchange between std::threads).
float __shfl_xor_sync(unsigned mask, float var, int lane_mask, int width = 32);
inline uint4 __ldg(const uint4* p) { return *p; }
inline unsigned char __ldg(const unsigned char* p) { return *p; }
using std::min;
