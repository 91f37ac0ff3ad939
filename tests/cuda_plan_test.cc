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
  EXPECT(p.threads % 32 == 0 && p.threads >= 32 && p.threads <= kThreads, "%s threads %d", kind, p.threads);
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
    EXPECT(p.smem_bytes <= size_t(dev.smem_optin) / 2, "%s smem %zu over half the opt-in %d", kind, p.smem_bytes,
           dev.smem_optin);
    // Each block writes at least as much output as the LUT tile it loads (when there are rows for it).
    if (rows >= 4 * int64_t(C)) {
      EXPECT(rows / p.grid_y >= 4 * int64_t(C) - p.rows_per_pass, "%s %lld rows over %u row tiles, C %d", kind,
             (long long)rows, p.grid_y, C);
    }
  } else {
    EXPECT(p.smem_bytes == 0, "%s global path with smem %zu", kind, p.smem_bytes);
    EXPECT(int64_t(C) * 16 * (nchw ? kNchwColumns : 16) > dev.smem_optin / 2, "%s fell back to global memory for C %d", kind,
           C);
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
  EXPECT(p.lut_in_shared && p.tile_m == 128 && p.grid_x == 4, "H100 C=32 M=512: tile %d shared %d", p.tile_m,
         int(p.lut_in_shared));
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
