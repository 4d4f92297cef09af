// Host emulation of the patchify CUDA kernel, for machines without a GPU (CI).
//
// g++ compiles csrc/patchify.cu and patchify.cuh unchanged against the shim headers in
// include/: each emulated block runs 256 std::threads (threadIdx is thread-local and
// __syncthreads a std::barrier), blocks run one after another, and shared memory is a global
// buffer refilled with 0xAB before each block. This checks the kernel's indexing, staging,
// vector/scalar head-tail split and padding bit-exactly against fmaf + the same rounding; it
// cannot check timing, races between blocks, or the real device intrinsics (the GPU tests do).
//
// Build and run (tests/test_build.py does this):
//   g++ -std=c++20 -O1 -pthread -Icsrc/emu/include -Icsrc -x c++ csrc/patchify.cu
//       -x c++ csrc/emu/patchify_emu.cpp -o patchify_emu && ./patchify_emu
#include <barrier>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "haic_kernels.h"
#include "patchify.cuh"

thread_local emu_uint3 threadIdx;
thread_local emu_uint3 blockIdx;
static std::barrier<>* g_block_barrier = nullptr;
void __syncthreads() { g_block_barrier->arrive_and_wait(); }

namespace haic::patchify_detail {
alignas(16) std::uint8_t tile[64 * 1024];  // the kernel's `extern __shared__` array
}

static long g_launches = 0;

cudaError_t cudaLaunchKernel(const void* func, dim3 grid, dim3 block, void** args,
                             std::size_t smem, cudaStream_t) {
  using Kernel = void (*)(haic::PatchifyParams, haic::patchify_detail::Layout);
  auto kernel = reinterpret_cast<Kernel>(const_cast<void*>(func));
  const auto prm = *static_cast<haic::PatchifyParams*>(args[0]);
  const auto lay = *static_cast<haic::patchify_detail::Layout*>(args[1]);
  if (smem > 48 * 1024 || grid.y != 1 || grid.z != 1) return 98;
  ++g_launches;
  for (unsigned bx = 0; bx < grid.x; ++bx) {
    std::memset(haic::patchify_detail::tile, 0xAB, sizeof(haic::patchify_detail::tile));
    std::barrier<> bar(block.x);
    g_block_barrier = &bar;
    std::vector<std::thread> threads;
    threads.reserve(block.x);
    for (unsigned t = 0; t < block.x; ++t) {
      threads.emplace_back([&, t] {
        threadIdx = {t, 0, 0};
        blockIdx = {bx, 0, 0};
        kernel(prm, lay);
      });
    }
    for (auto& th : threads) th.join();
  }
  return cudaSuccess;
}

static std::uint32_t bits_of(float y, haic::DType d) {
  if (d == haic::DType::kFloat32) return __float_as_uint(y);
  if (d == haic::DType::kFloat16) {
    const __half h = __float2half_rn(y);
    std::uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
  }
  return __float2bfloat16_rn(y).v;
}

static std::uint32_t load_bits(const std::uint8_t* out, haic::DType d, std::int64_t i) {
  if (d == haic::DType::kFloat32) {
    std::uint32_t u;
    std::memcpy(&u, out + 4 * i, 4);
    return u;
  }
  std::uint16_t u;
  std::memcpy(&u, out + 2 * i, 2);
  return u;
}

struct Case {
  int frames, height, width, patch, k_pad;
  int crop_y, crop_x, extra_w, frame_step, pixel_step, out_offset;  // views and misalignment
};

// Runs one case on a random frame buffer; returns the number of mismatches.
static int run_case(const Case& cs, haic::DType d, std::mt19937& rng) {
  const int p = cs.patch;
  const int big_h = cs.height + cs.crop_y + 1;
  const int big_w = (cs.width + cs.crop_x) * cs.pixel_step + cs.extra_w;
  const int big_f = cs.frames * cs.frame_step;
  std::vector<std::uint8_t> big(static_cast<std::size_t>(big_f) * big_h * big_w * 3 + 32);
  for (auto& v : big) v = static_cast<std::uint8_t>(rng());
  std::uint8_t* base = big.data() + (16 - reinterpret_cast<std::uintptr_t>(big.data()) % 16) % 16;
  const std::int64_t s_f = static_cast<std::int64_t>(cs.frame_step) * big_h * big_w * 3;
  const std::int64_t s_h = static_cast<std::int64_t>(big_w) * 3;
  const std::int64_t s_w = 3 * cs.pixel_step;
  const std::uint8_t* frames = base + cs.crop_y * s_h + cs.crop_x * s_w;

  const int ph_n = cs.height / p, pw_n = cs.width / p;
  const std::int64_t rows = static_cast<std::int64_t>(cs.frames) * ph_n * pw_n;
  const std::size_t es = d == haic::DType::kFloat32 ? 4 : 2;
  const std::size_t n_bytes = rows * cs.k_pad * es;
  std::vector<std::uint8_t> buf(n_bytes + 64, 0xFF);  // 0xFF..: NaN in every output dtype
  std::uint8_t* out = buf.data() + (16 - reinterpret_cast<std::uintptr_t>(buf.data()) % 16) % 16 +
                      cs.out_offset * es;

  const double mean[3] = {0.48145466, 0.4578275, 0.40821073};
  const double stdv[3] = {0.26862954, 0.26130258, 0.27577711};
  haic::PatchifyParams prm{};
  prm.frames = frames;
  prm.num_frames = cs.frames;
  prm.height = cs.height;
  prm.width = cs.width;
  prm.stride_f = s_f;
  prm.stride_h = s_h;
  prm.stride_w = s_w;
  prm.patch = p;
  prm.out = out;
  prm.out_dtype = d;
  prm.k_pad = cs.k_pad;
  for (int c = 0; c < 3; ++c) {
    prm.scale[c] = static_cast<float>(1.0 / (255.0 * stdv[c]));
    prm.shift[c] = static_cast<float>(-mean[c] / stdv[c]);
  }
  const cudaError_t err = haic::patchify_u8(prm, nullptr);
  if (err != cudaSuccess) {
    std::printf("  launch failed: %d\n", err);
    return 1;
  }

  int bad = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t f = r / (ph_n * pw_n), ph = r / pw_n % ph_n, pw = r % pw_n;
    for (int k = 0; k < cs.k_pad; ++k) {
      float y = 0.0f;
      if (k < 3 * p * p) {
        const int c = k / (p * p), kh = k % (p * p) / p, kw = k % p;
        const std::uint8_t x = frames[f * s_f + (ph * p + kh) * s_h + (pw * p + kw) * s_w + c];
        y = std::fmaf(static_cast<float>(x), prm.scale[c], prm.shift[c]);
      }
      const std::uint32_t want = bits_of(y, d), got = load_bits(out, d, r * cs.k_pad + k);
      if (want != got && bad++ < 5) {
        std::printf("  row %lld col %d: got bits %x want %x\n", static_cast<long long>(r), k, got,
                    want);
      }
    }
  }
  for (const std::uint8_t* q = buf.data(); q < out; ++q) bad += *q != 0xFF;
  for (const std::uint8_t* q = out + n_bytes; q < buf.data() + buf.size(); ++q) bad += *q != 0xFF;
  std::printf("F%d %dx%d p%d k_pad%d dtype%d crop(%d,%d) steps(f%d,px%d) out+%d: %s\n", cs.frames,
              cs.height, cs.width, p, cs.k_pad, static_cast<int>(d), cs.crop_y, cs.crop_x,
              cs.frame_step, cs.pixel_step, cs.out_offset, bad ? "MISMATCH" : "ok");
  return bad;
}

int main() {
  std::mt19937 rng(20240521);
  const Case cases[] = {
      {2, 28, 42, 14, 588, 0, 0, 0, 1, 1, 0},   // one tile per patch row, 16-byte loads
      {2, 28, 42, 14, 592, 0, 0, 0, 1, 1, 0},   // k_multiple 8
      {1, 28, 224, 14, 592, 0, 0, 0, 1, 1, 0},  // CogVLM2 width
      {1, 14, 560, 14, 588, 0, 0, 0, 1, 1, 0},  // 3 tiles per patch row (16, 16, 8)
      {2, 14, 560, 14, 592, 3, 5, 7, 2, 1, 0},  // crop view, every other frame: byte loads
      {3, 8, 12, 4, 48, 1, 2, 0, 1, 2, 1},      // every other pixel; output off 16-byte
      {3, 6, 10, 2, 13, 0, 0, 0, 1, 1, 3},      // odd k_pad: rows straddle vectors
      {1, 4, 2400, 2, 16, 0, 0, 0, 1, 1, 0},    // p=2: 1024-patch tiles
      {1, 1, 5, 1, 3, 0, 0, 0, 1, 1, 0},        // p=1
      {1, 40, 40, 40, 4800, 0, 0, 0, 1, 1, 0},  // large patch, one patch per block
  };
  int failures = 0;
  for (const auto d : {haic::DType::kFloat32, haic::DType::kFloat16, haic::DType::kBFloat16}) {
    for (const auto& cs : cases) failures += run_case(cs, d, rng) != 0;
  }
  // Launcher argument checks.
  haic::PatchifyParams bad{};
  bad.num_frames = 1;
  bad.height = bad.width = 14;
  bad.patch = 14;
  bad.k_pad = 587;  // < 3*14*14
  failures += haic::patchify_u8(bad, nullptr) != cudaErrorInvalidValue;
  bad.k_pad = 588;
  bad.height = 15;
  failures += haic::patchify_u8(bad, nullptr) != cudaErrorInvalidValue;
  bad.height = 0;  // empty: nothing to do, not even a launch
  const long before = g_launches;
  failures += haic::patchify_u8(bad, nullptr) != cudaSuccess || g_launches != before;
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
