// Launch geometry of the CUDA kernels: plain C++ (no CUDA headers), so that it is unit-tested on machines without
// a GPU or toolkit (tests/test_cuda_host.py compiles tests/cuda_plan_test.cc against it).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

// The few helpers that kernels share with their launchers are compiled for both sides under nvcc.
#ifdef __CUDACC__
#define HALUT_HOST_DEVICE __host__ __device__
#else
#define HALUT_HOST_DEVICE
#endif

namespace halut::cuda {

// What the launchers need to know about the device; read once per kernel (query_device in halut_cuda.cu).
struct DeviceInfo {
  int id = 0;
  int sms = 1;
  int smem_optin = 48 * 1024;      // dynamic shared memory one block may opt in to
  int smem_per_sm = 100 * 1024;    // shared memory of one SM
  int max_threads_per_sm = 2048;
};

constexpr int kThreads = 256;         // threads per block of every kernel but lookup_nchw's narrower fallbacks
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y (and z)
constexpr int kCodes = 16;

// Grid-stride 1-D launches: enough blocks to fill every SM a few times over, never more than the work needs.
// gridDim.x may reach 2^31 - 1, far above this cap.
inline unsigned grid_1d(int64_t work, const DeviceInfo& dev) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  const int64_t cap = int64_t(std::max(dev.sms, 1)) * 32;
  return unsigned(std::max<int64_t>(1, std::min(blocks, cap)));
}

// The pq row encoder's threads: one per (row, codebook), the rows in blocks of 32 (a warp), so C * 32 per block.
HALUT_HOST_DEVICE inline int64_t pq_threads(int64_t rows, int32_t C) { return (rows + 31) / 32 * 32 * C; }

// How the row-major lookup reads a row's codes: 16 per 16-byte load (C % 16 == 0 and codes 16-byte aligned, so every
// row and chunk start is), 4 per 32-bit load (C % 4 == 0, 4-byte aligned), or one by one.
enum CodeLoad : int { kCodeBytes = 0, kCodeWords = 1, kCodeVectors = 2 };

inline int code_load(int32_t C, const void* codes) {
  const auto address = reinterpret_cast<uintptr_t>(codes);
  if (C % 16 == 0 && address % 16 == 0) return kCodeVectors;
  if (C % 4 == 0 && address % 4 == 0) return kCodeWords;
  return kCodeBytes;
}

// Whether every pq slice bound (bounds[0..C], so D too) is a multiple of 4: the row encoder can then read X 4 floats
// per load (when X is 16-byte aligned).
inline bool slices_of_4(const int64_t* bounds, int32_t C) {
  for (int32_t c = 0; c <= C; ++c)
    if (bounds[c] % 4 != 0) return false;
  return true;
}

struct LookupPlan {
  int threads = kThreads;    // blockDim.x
  int tile_m = 4;            // output columns per block (multiple of 4: each thread owns 4)
  int rows_per_pass = 1;     // rows a block covers per pass
  bool lut_in_shared = false;
  size_t smem_bytes = 0;     // the block's LUT tile: C * 16 * tile_m int8
  unsigned grid_x = 1, grid_y = 1;
};

namespace detail {

// Blocks of `threads` with `smem` bytes each that fit one SM at once (registers permitting).
inline int64_t resident_blocks(const DeviceInfo& dev, int threads, size_t smem) {
  int64_t by_threads = std::max(1, dev.max_threads_per_sm / threads);
  // The runtime reserves 1 KB of shared memory per block.
  int64_t by_smem = smem == 0 ? by_threads : int64_t(dev.smem_per_sm) / int64_t(smem + 1024);
  return std::max<int64_t>(1, std::min(by_threads, by_smem));
}

// Row tiles (gridDim.y): one wave of resident blocks over all column tiles, but every block sweeps at least 4 C rows
// when its LUT tile sits in shared memory, so that loading the tile (C * 16 * tile_m bytes, from L2) costs no more
// than the output the block writes (4 C rows * tile_m * 4 bytes).
inline unsigned row_tiles(int64_t rows, int64_t rows_per_pass, int32_t C, unsigned grid_x, const LookupPlan& p,
                          const DeviceInfo& dev) {
  const int64_t passes = (rows + rows_per_pass - 1) / rows_per_pass;
  const int64_t want = int64_t(std::max(dev.sms, 1)) * resident_blocks(dev, p.threads, p.smem_bytes);
  int64_t tiles = std::min<int64_t>(passes, (want + grid_x - 1) / grid_x);
  if (p.lut_in_shared) tiles = std::min<int64_t>(tiles, std::max<int64_t>(1, rows / (4 * int64_t(C))));
  return unsigned(std::max<int64_t>(1, std::min(tiles, kMaxGridY)));
}

}  // namespace detail

// The row-major lookup keeps 768 threads (24 warps) per SM in one to three blocks: the register cap of its launch
// bounds, 65536 / 768 = 85 per thread, is what its hot loop needs unspilled.
constexpr int kLookupThreadsPerSm = 768;

// Row-major Y[rows][M]: a block owns tile_m consecutive columns, a thread 16 of them (one 16-byte LUT load per
// codebook), tile_m / 16 threads per row. The tile's LUT sits in shared memory at the widest of 128, 64, 32 or 16
// columns that fits the opt-in limit, in as many blocks per SM (up to 3) as the SM's shared memory holds, of
// 768 / blocks threads each. 128 columns make a quarter warp one row, whose 16-byte loads are conflict-free; in a
// narrower tile a quarter warp spans 2 to 8 rows, whose codes conflict when they differ within a bank column (with
// random codes 1.44x the wavefronts at 64 columns, 1.8x at 32), so the width wins over blocks per SM: C = 57 .. 113
// takes one block of 768 threads with a 128-column tile rather than three with 64 columns. Past the opt-in limit
// at 16 columns the LUT is read from global memory, 128 columns per block of 256 threads.
inline LookupPlan plan_lookup(int64_t rows, int32_t C, int32_t M, const DeviceInfo& dev) {
  LookupPlan p;
  const int64_t limit = dev.smem_optin;
  p.tile_m = 128;
  while (p.tile_m > 16 && int64_t(C) * kCodes * p.tile_m > limit) p.tile_m /= 2;
  p.lut_in_shared = int64_t(C) * kCodes * p.tile_m <= limit;
  if (p.lut_in_shared) {
    p.smem_bytes = size_t(C) * kCodes * p.tile_m;
    const int64_t blocks = std::min<int64_t>(3, detail::resident_blocks(dev, kLookupThreadsPerSm / 3, p.smem_bytes));
    p.threads = kLookupThreadsPerSm / int(blocks);
  } else {
    p.tile_m = 128;
  }
  p.rows_per_pass = p.threads / (p.tile_m / 16);
  p.grid_x = unsigned((int64_t(M) + p.tile_m - 1) / p.tile_m);
  p.grid_y = detail::row_tiles(rows, p.rows_per_pass, C, p.grid_x, p, dev);
  return p;
}

// NCHW Y[B][M][P]: a warp covers 32 consecutive positions for one group of kNchwColumns columns, so each of its
// stores is 128 contiguous bytes of one plane; a block is G warps = G column groups (tile_m = 8 G). The shared
// tile is stored group-major ([G][C * 16] lines of 8 bytes), so a codebook's 16 lines are one 128-byte bank row.
constexpr int kNchwColumns = 8;

inline LookupPlan plan_lookup_nchw(int64_t rows, int32_t C, int32_t M, const DeviceInfo& dev) {
  LookupPlan p;
  const int64_t budget = dev.smem_optin / 2;
  int groups = 8;
  while (groups > 1 && int64_t(C) * kCodes * kNchwColumns * groups > budget) groups /= 2;
  p.lut_in_shared = int64_t(C) * kCodes * kNchwColumns * groups <= budget;
  if (!p.lut_in_shared) groups = 8;
  p.threads = 32 * groups;
  p.tile_m = kNchwColumns * groups;
  p.smem_bytes = p.lut_in_shared ? size_t(C) * kCodes * p.tile_m : 0;
  p.rows_per_pass = 32;
  p.grid_x = unsigned((int64_t(M) + p.tile_m - 1) / p.tile_m);
  p.grid_y = detail::row_tiles(rows, p.rows_per_pass, C, p.grid_x, p, dev);
  return p;
}

}  // namespace halut::cuda
