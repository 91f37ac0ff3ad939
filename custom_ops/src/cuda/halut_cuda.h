// Pointer-level CUDA kernels for the Halut ops (docs/ops.md). No onnxruntime types here: the ORT-facing layer
// validates shapes, owns device buffers and passes raw pointers and the stream onnxruntime gives the kernel.
// Every launcher only enqueues work on `stream` and returns the launch's cudaError_t; none synchronizes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace halut::cuda {

// Device-side layouts, packed once on the host at kernel creation (see pack_* in halut_cuda_pack.h):
//  lookup:  lut_packed int8 [C][16][m_pad]  (m contiguous, m_pad = M rounded up to 4, zero filled)
//  tree:    dims int32 [C][4], thresholds float [C][15] (as in the op)
//  pq:      vectors float [16][D], biases float [C][16] (as in the op), bounds int32 [C + 1]

cudaError_t encode_tree(const float* x, int64_t rows, int32_t D, int32_t C, const int32_t* dims,
                        const float* thresholds, uint8_t* codes, cudaStream_t stream);

cudaError_t encode_pq(const float* x, int64_t rows, int32_t D, int32_t C, const int32_t* bounds,
                      const float* vectors, const float* biases, uint8_t* codes, cudaStream_t stream);

cudaError_t lookup(const uint8_t* codes, int64_t rows, int32_t C, int32_t M, int32_t m_pad, const int8_t* lut_packed,
                   const float* scale, const float* offset, float* y, cudaStream_t stream);

}  // namespace halut::cuda
