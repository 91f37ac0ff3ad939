// Checks the CUDA kernels' launch geometry (custom_ops/src/cuda/launch_plan.h) without a GPU: compiled and run by
// tests/test_cuda_host.py. Prints the first violated rule and exits 1.
#include <cstdio>
#include <cstdlib>

#include "../custom_ops/src/cuda/launch_plan.h"

using namespace halut::cuda;

static int failures = 0;

#define EXPECT(cond, ...)                           \
  do {                                              \
    if (!(cond)) {                                  \
      if (failures++ < 10) {                        \
        std::printf("FAIL %s: ", #cond);            \
        std::printf(__VA_ARGS__);                   \
        std::printf("\n");                          \
      }                                             \
    }                                               \
  } while (0)

static void check(const LookupPlan& p, bool nchw, int64_t rows, int32_t C, int32_t M, const DeviceInfo& dev) {
  const char* kind = nchw ? "nchw" : "rows";
  EXPECT(p.threads % 32 == 0 && p.threads >= 32 && p.threads <= (nchw ? kThreads : kLookupThreadsPerSm),
         "%s threads %d", kind, p.threads);
  EXPECT(p.tile_m % 4 == 0 && p.tile_m >= 4, "%s tile_m %d", kind, p.tile_m);
  // Every output column is covered by exactly the column tiles.
  EXPECT(int64_t(p.grid_x) * p.tile_m >= M && int64_t(p.grid_x - 1) * p.tile_m < M, "%s grid_x %u tile %d M %d",
         kind, p.grid_x, p.tile_m, M);
  EXPECT(p.grid_y >= 1 && p.grid_y <= kMaxGridY, "%s grid_y %u (rows %lld)", kind, p.grid_y, (long long)rows);
  // Grid-stride rows: no block without work beyond the first pass.
  EXPECT(int64_t(p.grid_y - 1) * p.rows_per_pass < rows || p.grid_y == 1, "%s grid_y %u for %lld rows", kind,
         p.grid_y, (long long)rows);
  if (nchw) {
    EXPECT(p.rows_per_pass == 32 && p.tile_m == kNchwColumns * (p.threads / 32), "nchw layout tile %d threads %d",
           p.tile_m, p.threads);
  } else {
    EXPECT(p.tile_m % 16 == 0 && p.rows_per_pass * (p.tile_m / 16) == p.threads,
           "rows layout: %d rows x %d threads != %d", p.rows_per_pass, p.tile_m / 16, p.threads);
  }
  if (p.lut_in_shared) {
    EXPECT(p.smem_bytes == size_t(C) * 16 * p.tile_m, "%s smem %zu for C %d tile %d", kind, p.smem_bytes, C,
           p.tile_m);
    EXPECT(p.smem_bytes <= size_t(dev.smem_optin) / (nchw ? 2 : 1), "%s smem %zu over the opt-in %d", kind,
           p.smem_bytes, dev.smem_optin);
    if (!nchw) {
      // The widest tile that fits, and 768 threads per SM in as many blocks as the SM's shared memory holds.
      EXPECT(p.tile_m == 128 || int64_t(C) * 16 * p.tile_m * 2 > dev.smem_optin, "rows tile %d for C %d",
             p.tile_m, C);
      const int64_t blocks = std::min<int64_t>(3, std::max<int64_t>(1, dev.smem_per_sm / int64_t(p.smem_bytes + 1024)));
      EXPECT(p.threads * blocks == kLookupThreadsPerSm, "rows threads %d for %lld blocks", p.threads,
             (long long)blocks);
    }
    // Each block writes at least as much output as the LUT tile it loads (when there are rows for it).
    if (rows >= 4 * int64_t(C)) {
      EXPECT(rows / p.grid_y >= 4 * int64_t(C) - p.rows_per_pass, "%s %lld rows over %u row tiles, C %d", kind,
             (long long)rows, p.grid_y, C);
    }
  } else {
    EXPECT(p.smem_bytes == 0, "%s global path with smem %zu", kind, p.smem_bytes);
    EXPECT(int64_t(C) * 16 * (nchw ? kNchwColumns : 16) > dev.smem_optin / (nchw ? 2 : 1),
           "%s fell back to global memory for C %d", kind, C);
  }
}

int main() {
  DeviceInfo h100;
  h100.sms = 132, h100.smem_optin = 227 * 1024, h100.smem_per_sm = 228 * 1024, h100.max_threads_per_sm = 2048;
  DeviceInfo small;  // a device with the 48 KB default and few SMs
  small.sms = 2, small.smem_optin = 48 * 1024, small.smem_per_sm = 64 * 1024;
  const int64_t rows_list[] = {1, 17, 255, 4096, 65536, 10000000, 1LL << 31};
  const int32_t c_list[] = {1, 5, 32, 64, 300, 1500, 5000};
  const int32_t m_list[] = {1, 3, 17, 512, 1030, 3072};
  for (const DeviceInfo& dev : {h100, small}) {
    for (int64_t rows : rows_list)
      for (int32_t C : c_list)
        for (int32_t M : m_list) {
          check(plan_lookup(rows, C, M, dev), false, rows, C, M, dev);
          check(plan_lookup_nchw(rows, C, M, dev), true, rows, C, M, dev);
        }
    for (int64_t work : {int64_t(1), int64_t(255), int64_t(257), int64_t(1) << 40}) {
      const unsigned g = grid_1d(work, dev);
      EXPECT(g >= 1 && int64_t(g) <= int64_t(dev.sms) * 32 && int64_t(g) <= (work + kThreads - 1) / kThreads + 1,
             "grid_1d(%lld) = %u", (long long)work, g);
    }
  }
  // The tile the H100 gets for the benchmark shapes: the whole 128-column LUT tile in shared memory at C = 32.
  const LookupPlan p = plan_lookup(65536, 32, 512, h100);
  EXPECT(p.lut_in_shared && p.tile_m == 128 && p.grid_x == 4 && p.threads == 256, "H100 C=32 M=512: tile %d "
         "shared %d threads %d", p.tile_m, int(p.lut_in_shared), p.threads);
  // C = 64 (the converter's choice near D = 128): one block of 768 threads with the conflict-free 128-column tile;
  // C = 128 (D >= 256): 64 columns, one block; C = 900: 16 columns in shared memory.
  const LookupPlan p64 = plan_lookup(65536, 64, 512, h100), p128 = plan_lookup(65536, 128, 512, h100);
  EXPECT(p64.tile_m == 128 && p64.threads == 768 && p128.tile_m == 64 && p128.threads == 768,
         "H100 C=64: tile %d threads %d; C=128: tile %d threads %d", p64.tile_m, p64.threads, p128.tile_m,
         p128.threads);
  EXPECT(plan_lookup(65536, 900, 512, h100).lut_in_shared, "H100 C=900 in shared memory");
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
