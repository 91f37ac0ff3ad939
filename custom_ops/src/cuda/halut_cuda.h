// Pointer-level CUDA kernels for the Halut ops (docs/ops.md). No onnxruntime types here: the ORT-facing layer
// (src/host/cuda_ops.cc) validates shapes, packs and uploads the weights, and passes raw device pointers and the
// stream onnxruntime gives the kernel. Every launcher only enqueues work on `stream` and returns the launch's
// cudaError_t; none synchronizes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "launch_plan.h"

namespace halut::cuda {

// Device properties the launchers size their grids by, read once at kernel creation (no query per launch).
cudaError_t query_device(DeviceInfo* out);

// Weights in device memory, packed by the host layer's shared packing (src/cpu/pack.h):
//  tree:   dims int32 [C][4] (column or patch indices), thresholds float [C][16] (slot 15 unused)
//  pq:     vectors_t float [D][16] (prototype-minor), biases float [C][16], bounds int64 [C + 1]
//  lookup: lut [Cpad][16][m_pad] (code-major: m contiguous, m_pad a multiple of 16) biased to unsigned: the byte
//          is entry + 128 (the int8 bits ^ 0x80; the lookups subtract 128 C from their sums),
//          scale / offset float [m_pad]
struct TreeWeights {
  const int32_t* dims;
  const float* thresholds;
  int32_t C;
};
struct PqWeights {
  const float* vectors_t;
  const float* biases;
  const int64_t* bounds;
  int32_t C;
  int64_t D;
  bool slices_of_4 = false;  // launch_plan.h's slices_of_4(bounds): the row encoder reads X 4 floats per load
};
struct LutWeights {
  const int8_t* lut;
  const float* scale;
  const float* offset;
  int32_t M, C, m_pad;
};

// The convolution a Conv encode op reads its patch rows from (pads resolved; docs/ops.md "Conv ops").
struct ConvShape {
  int64_t B;
  int32_t Cin, H, W, Ho, Wo;
  int32_t kh, kw, sh, sw, dh, dw, top, left;
};

// codes[rows][C] from x[rows][D].
cudaError_t encode_tree(const DeviceInfo& dev, const float* x, int64_t rows, int64_t D, const TreeWeights& w,
                        uint8_t* codes, cudaStream_t stream);
cudaError_t encode_pq(const DeviceInfo& dev, const float* x, int64_t rows, const PqWeights& w, uint8_t* codes,
                      cudaStream_t stream);
// codes[B][Ho][Wo][C] from the NCHW activation x; tree dims are patch indices (ci * kh + ky) * kw + kx.
cudaError_t encode_tree_conv(const DeviceInfo& dev, const float* x, const ConvShape& s, const TreeWeights& w,
                             uint8_t* codes, cudaStream_t stream);
cudaError_t encode_pq_conv(const DeviceInfo& dev, const float* x, const ConvShape& s, const PqWeights& w,
                           uint8_t* codes, cudaStream_t stream);
// y[rows][M] from codes[rows][C].
cudaError_t lookup(const DeviceInfo& dev, const uint8_t* codes, int64_t rows, const LutWeights& w, float* y,
                   cudaStream_t stream);
// y[B][M][P] (NCHW, P = Ho * Wo) from codes[B][P][C].
cudaError_t lookup_nchw(const DeviceInfo& dev, const uint8_t* codes, int64_t B, int64_t P, const LutWeights& w,
                        float* y, cudaStream_t stream);

}  // namespace halut::cuda
