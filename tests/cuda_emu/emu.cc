// The CUDA kernels run on the CPU through shim.h, behind C entry points that mirror the launchers of
// halut_cuda.cu (same launch plans from launch_plan.h). tests/test_cuda_emulated.py extracts the kernels from
// halut_cuda.cu into kernels.inc, compiles this file and calls it through ctypes.
#include "shim.h"
// shim.h first: halut_cuda.h then sees the stand-in cuda_runtime.h (include path) and the shim's dim3.
#include "halut_cuda.h"

namespace halut::cuda {
namespace {
alignas(16) uint32_t shared_lut[kSharedWords];
#include "kernels.inc"
const bool kSharedRegistered = (shared_memory = shared_lut, true);
}  // namespace
}  // namespace halut::cuda

using namespace halut::cuda;

static DeviceInfo device(int smem_optin) {
  DeviceInfo d;
  d.sms = 2;
  d.smem_optin = smem_optin;
  d.smem_per_sm = smem_optin + 1024;
  return d;
}

static bool aligned(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; }

extern "C" {

void emu_encode_tree(const float* x, int64_t rows, int64_t D, const int32_t* dims, const float* thr, int32_t C,
                     uint8_t* codes) {
  if (rows == 0) return;
  launch(dim3{grid_1d(rows * C, device(48 << 10)), 1, 1}, kThreads, encode_tree_kernel, x, rows, D,
         TreeWeights{dims, thr, C}, codes);
}

void emu_encode_pq(const float* x, int64_t rows, const float* vt, const float* biases, const int64_t* bounds,
                   int32_t C, int64_t D, uint8_t* codes) {
  if (rows == 0) return;
  // The host layer's (bounds) and the launcher's (alignment) choice of 4-float loads.
  launch(dim3{grid_1d(pq_threads(rows, C), device(48 << 10)), 1, 1}, kThreads, encode_pq_kernel, x, rows,
         PqWeights{vt, biases, bounds, C, D, slices_of_4(bounds, C) && aligned(x, 16)}, codes);
}

static ConvShape shape_of(const int64_t* g) {
  ConvShape s;
  s.B = g[0];
  int32_t* f[] = {&s.Cin, &s.H, &s.W, &s.Ho, &s.Wo, &s.kh, &s.kw, &s.sh, &s.sw, &s.dh, &s.dw, &s.top, &s.left};
  for (int i = 0; i < 13; ++i) *f[i] = int32_t(g[i + 1]);
  return s;
}

void emu_encode_tree_conv(const float* x, const int64_t* geometry, const int32_t* dims, const float* thr, int32_t C,
                          uint8_t* codes) {
  const ConvShape s = shape_of(geometry);
  const int64_t N = s.B * s.Ho * int64_t(s.Wo);
  if (N == 0) return;
  launch(dim3{grid_1d(N * C, device(48 << 10)), 1, 1}, kThreads, encode_tree_conv_kernel, x, s,
         TreeWeights{dims, thr, C}, codes);
}

void emu_encode_pq_conv(const float* x, const int64_t* geometry, const float* vt, const float* biases,
                        const int64_t* bounds, int32_t C, int64_t D, uint8_t* codes) {
  const ConvShape s = shape_of(geometry);
  const int64_t N = s.B * s.Ho * int64_t(s.Wo);
  if (N == 0) return;
  launch(dim3{grid_1d(N * C, device(48 << 10)), 1, 1}, kThreads, encode_pq_conv_kernel, x, s,
         PqWeights{vt, biases, bounds, C, D}, codes);
}

void emu_lookup(const uint8_t* codes, int64_t rows, const int8_t* lut, const float* scale, const float* offset,
                int32_t M, int32_t C, int32_t m_pad, float* y, int smem_optin) {
  if (rows == 0 || M == 0) return;
  const LookupPlan p = plan_lookup(rows, C, M, device(smem_optin));
  const LutWeights w{lut, scale, offset, M, C, m_pad};
  // The launcher's choices (halut_cuda.cu, lookup()).
  const int load = code_load(C, codes);
  const bool vector_ok = M % 4 == 0 && aligned(y, 16);
  const dim3 grid{p.grid_x, p.grid_y, 1};
  if (!p.lut_in_shared) return launch(grid, p.threads, lookup_kernel<128, false>, codes, rows, w, y, load, vector_ok, 1u);
  switch (p.tile_m) {
    case 128: return launch(grid, p.threads, lookup_kernel<128, true>, codes, rows, w, y, load, vector_ok, 1u);
    case 64: return launch(grid, p.threads, lookup_kernel<64, true>, codes, rows, w, y, load, vector_ok, 1u);
    case 32: return launch(grid, p.threads, lookup_kernel<32, true>, codes, rows, w, y, load, vector_ok, 1u);
    default: return launch(grid, p.threads, lookup_kernel<16, true>, codes, rows, w, y, load, vector_ok, 1u);
  }
}

void emu_lookup_nchw(const uint8_t* codes, int64_t B, int64_t P, const int8_t* lut, const float* scale,
                     const float* offset, int32_t M, int32_t C, int32_t m_pad, float* y, int smem_optin) {
  const int64_t rows = B * P;
  if (rows == 0 || M == 0) return;
  const LookupPlan p = plan_lookup_nchw(rows, C, M, device(smem_optin));
  const LutWeights w{lut, scale, offset, M, C, m_pad};
  const int load = code_load(C, codes);
  if (p.lut_in_shared) {
    launch(dim3{p.grid_x, p.grid_y, 1}, p.threads, lookup_nchw_kernel<true>, codes, rows, P, w, y, load, 1u);
  } else {
    launch(dim3{p.grid_x, p.grid_y, 1}, p.threads, lookup_nchw_kernel<false>, codes, rows, P, w, y, load, 1u);
  }
}

}  // extern "C"
