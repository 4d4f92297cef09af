// Host emulation of the gather2x2 CUDA kernels, for machines without a GPU (CI).
//
// g++ compiles csrc/gather2x2.cu and gather2x2.cuh unchanged against the shim headers in
// include/. The kernels have no shared memory and no barrier, so the emulated launch runs every
// (block, thread) pair one after another. Checks, bit-exactly against a plain host loop: the
// vector and element paths, CLS / no CLS, odd grids of output rows, misaligned bases, padded and
// channel-strided inputs, 1/2/4-byte elements, and that nothing outside the output is written;
// UBSan (-fsanitize=alignment) catches a misaligned 16-byte access.
//
// Build and run (tests/ops/test_conv_compress.py does this):
//   g++ -std=c++20 -O1 -Icsrc/emu/include -Icsrc -x c++ csrc/gather2x2.cu
//       -x c++ csrc/emu/gather2x2_emu.cpp -o gather2x2_emu && ./gather2x2_emu
#include <cstdio>
#include <random>
#include <vector>

#include "gather2x2.cuh"
#include "haic_kernels.h"

thread_local emu_uint3 threadIdx;
thread_local emu_uint3 blockIdx;

static long g_launches = 0;

cudaError_t cudaLaunchKernel(const void* func, dim3 grid, dim3 block, void** args,
                             std::size_t smem, cudaStream_t) {
  using Kernel = void (*)(haic::Gather2x2Params, haic::gather2x2_detail::Layout);
  auto kernel = reinterpret_cast<Kernel>(const_cast<void*>(func));
  const auto prm = *static_cast<haic::Gather2x2Params*>(args[0]);
  const auto lay = *static_cast<haic::gather2x2_detail::Layout*>(args[1]);
  if (smem != 0 || grid.y != 1 || grid.z != 1 || block.x != 256) return 98;
  ++g_launches;
  for (unsigned bx = 0; bx < grid.x; ++bx) {
    for (unsigned t = 0; t < block.x; ++t) {
      threadIdx = {t, 0, 0};
      blockIdx = {bx, 0, 0};
      kernel(prm, lay);
    }
  }
  return cudaSuccess;
}

struct Case {
  const char* name;
  int frames, grid, channels, elem_size;
  bool cls;
  std::int64_t pad_t, pad_f;  // extra elements per token row / per frame
  int stride_c;
  int x_offset, out_offset;  // elements, to misalign the bases
  bool expect_vec;
};

static int run(const Case& cs, std::mt19937& rng) {
  const std::int64_t g = cs.grid, c = cs.channels, es = cs.elem_size;
  const std::int64_t tokens = g * g + (cs.cls ? 1 : 0);
  const std::int64_t st = c * cs.stride_c + cs.pad_t;
  const std::int64_t sf = tokens * st + cs.pad_f;
  const std::int64_t x_elems = cs.frames * sf + cs.x_offset + 1;
  const std::int64_t rows = cs.frames * (g / 2) * (g / 2);
  const std::int64_t out_elems = rows * 4 * c;
  // uint4-typed storage: 16-byte aligned bases, offsets applied in bytes.
  std::vector<uint4> xbuf((x_elems * es + 15) / 16 + 1), obuf(((out_elems + 64) * es + 15) / 16);
  auto* xb = reinterpret_cast<std::uint8_t*>(xbuf.data());
  auto* ob = reinterpret_cast<std::uint8_t*>(obuf.data());
  for (std::size_t i = 0; i < xbuf.size() * 16; ++i) xb[i] = static_cast<std::uint8_t>(rng());
  std::memset(ob, 0xCD, obuf.size() * 16);

  haic::Gather2x2Params prm{};
  prm.x = xb + cs.x_offset * es;
  prm.num_frames = cs.frames;
  prm.tokens = tokens;
  prm.channels = c;
  prm.stride_f = sf;
  prm.stride_t = st;
  prm.stride_c = cs.stride_c;
  prm.elem_size = cs.elem_size;
  prm.grid = cs.grid;
  prm.out = ob + cs.out_offset * es;
  if (haic::gather2x2_vectorized(prm) != cs.expect_vec) {
    std::printf("FAIL %s: vectorized=%d, expected %d\n", cs.name, !cs.expect_vec, cs.expect_vec);
    return 1;
  }
  if (haic::gather2x2(prm, nullptr) != cudaSuccess) {
    std::printf("FAIL %s: launch error\n", cs.name);
    return 1;
  }
  const auto* x = static_cast<const std::uint8_t*>(prm.x);
  const auto* out = static_cast<const std::uint8_t*>(prm.out);
  const std::int64_t half = g / 2;
  for (std::int64_t m = 0; m < rows; ++m) {
    const std::int64_t f = m / (half * half), i = (m / half) % half, j = m % half;
    for (int kh = 0; kh < 2; ++kh)
      for (int kw = 0; kw < 2; ++kw)
        for (std::int64_t ch = 0; ch < c; ++ch) {
          const std::int64_t t = tokens - g * g + (2 * i + kh) * g + 2 * j + kw;
          const std::uint8_t* want = x + (f * sf + t * st + ch * cs.stride_c) * es;
          const std::uint8_t* got = out + (m * 4 * c + (kh * 2 + kw) * c + ch) * es;
          if (std::memcmp(want, got, es) != 0) {
            std::printf("FAIL %s: row %lld tap (%d,%d) channel %lld\n", cs.name,
                        static_cast<long long>(m), kh, kw, static_cast<long long>(ch));
            return 1;
          }
        }
  }
  for (std::int64_t b = 0; b < cs.out_offset * es; ++b)
    if (ob[b] != 0xCD) {
      std::printf("FAIL %s: wrote before the output\n", cs.name);
      return 1;
    }
  for (std::int64_t b = (cs.out_offset + out_elems) * es; b < static_cast<std::int64_t>(obuf.size() * 16); ++b)
    if (ob[b] != 0xCD) {
      std::printf("FAIL %s: wrote past the output\n", cs.name);
      return 1;
    }
  std::printf("ok %s\n", cs.name);
  return 0;
}

int main() {
  std::mt19937 rng(1234);
  const Case cases[] = {
      // name, F, g, C, es, cls, pad_t, pad_f, stride_c, x_off, out_off, vec
      {"bf16-cls-vec", 3, 4, 24, 2, true, 0, 0, 1, 0, 0, true},
      {"bf16-nocls-vec", 1, 6, 16, 2, false, 0, 0, 1, 0, 0, true},
      {"fp32-cls-vec-padded", 2, 4, 12, 4, true, 4, 8, 1, 0, 0, true},
      {"bf16-odd-C", 3, 4, 13, 2, true, 0, 0, 1, 0, 0, false},
      {"bf16-misaligned-x", 2, 4, 24, 2, true, 0, 0, 1, 1, 0, false},
      {"bf16-misaligned-out", 2, 4, 24, 2, false, 0, 0, 1, 0, 3, false},
      {"fp32-channel-stride", 2, 6, 5, 4, true, 1, 0, 3, 0, 0, false},
      {"u8-cls", 5, 2, 7, 1, true, 0, 3, 1, 2, 1, false},
      {"fp16-stride-t-unaligned", 2, 4, 16, 2, true, 1, 0, 1, 0, 0, false},
      {"bf16-many-vectors", 2, 4, 1000, 2, true, 0, 0, 1, 0, 0, true},
  };
  int fails = 0;
  for (const auto& cs : cases) fails += run(cs, rng);
  if (g_launches != static_cast<long>(sizeof(cases) / sizeof(cases[0]))) {
    std::printf("FAIL: %ld launches\n", g_launches);
    ++fails;
  }
  // Empty and invalid inputs launch nothing.
  haic::Gather2x2Params empty{};
  empty.grid = 4;
  empty.tokens = 17;
  empty.elem_size = 2;
  if (haic::gather2x2(empty, nullptr) != cudaSuccess) ++fails;
  haic::Gather2x2Params bad = empty;
  bad.grid = 3;
  bad.tokens = 9;
  if (haic::gather2x2(bad, nullptr) != cudaErrorInvalidValue) ++fails;
  std::printf(fails ? "FAILED %d\n" : "all ok\n", fails);
  return fails ? 1 : 0;
}
