// Runs the CUDA kernels of custom_ops/src/cuda/halut_cuda.cu on the CPU for tests (tests/test_cuda_emulated.py):
// the CUDA built-ins as plain C++, one std::thread per CUDA thread of a block and std::barrier for __syncthreads,
// blocks one after another. Floating point follows the kernels' explicit rounding (compiled -ffp-contract=off).
#pragma once
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;
inline void __syncthreads() { block_barrier->arrive_and_wait(); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n)  // emu.cc defines shared_lut 16-byte aligned

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __uint_as_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return uint32_t((uint64_t(a) * b) >> 32); }
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  const uint64_t pool = (uint64_t(y) << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t((pool >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
using std::min;
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
struct alignas(8) uint2 {
  uint32_t x, y;
};
inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }

// The block's dynamic shared memory (blocks run one at a time), defined where the kernels are (emu.cc): their
// `extern __shared__` array names an entity of their own namespace.
constexpr size_t kSharedWords = 1 << 17;
inline uint32_t* shared_memory = nullptr;

// Runs kernel(args...) over the grid.
template <typename Kernel, typename... Args>
void launch(dim3 grid, unsigned threads, Kernel kernel, Args... args) {
  gridDim = grid;
  blockDim = dim3{threads, 1, 1};
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::memset(shared_memory, 0xAB, kSharedWords * 4);  // stale contents must never be read
      std::barrier<> barrier(threads);
      block_barrier = &barrier;
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          threadIdx = dim3{t, 0, 0};
          blockIdx = dim3{bx, by, 0};
          kernel(args...);
          barrier.arrive_and_drop();  // a thread that returned no longer takes part in barriers
        });
      }
      for (auto& th : pool) th.join();
    }
  }
}
