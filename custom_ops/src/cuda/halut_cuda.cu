// CUDA kernels for the Halut ops. Evaluation order and rounding follow docs/ops.md exactly (__fmul_rn/__fadd_rn
// keep nvcc from contracting into FMA), so codes and outputs are bit-identical to the CPU kernels.
#include "halut_cuda.h"

#include <algorithm>

namespace halut::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kCodes = 16;

// ---- encode: tree ---------------------------------------------------------------------------------------------
// One thread per (row, codebook), codebook-major inside a warp would scatter the row reads; row-major keeps the 4
// column reads of neighbouring threads in the same row's cache lines.
__global__ void encode_tree_kernel(const float* __restrict__ x, int64_t rows, int32_t D, int32_t C,
                                   const int32_t* __restrict__ dims, const float* __restrict__ thresholds,
                                   uint8_t* __restrict__ codes) {
  const int64_t total = rows * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C;
    const int32_t c = int32_t(i - n * C);
    const float* row = x + n * D;
    const int32_t* d = dims + 4 * c;
    const float* t = thresholds + 15 * c;
    int node = 0;
#pragma unroll
    for (int level = 0; level < 4; ++level) {
      const float v = row[__ldg(d + level)];
      node = 2 * node + (v > __ldg(t + (1 << level) - 1 + node) ? 1 : 0);
    }
    codes[i] = uint8_t(node);
  }
}

// ---- encode: pq -----------------------------------------------------------------------------------------------
// One thread per (row, codebook), codebook-major so a warp shares the codebook's folded vectors (broadcast loads)
// while each thread streams its own row slice.
__global__ void encode_pq_kernel(const float* __restrict__ x, int64_t rows, int32_t D, int32_t C,
                                 const int32_t* __restrict__ bounds, const float* __restrict__ vectors,
                                 const float* __restrict__ biases, uint8_t* __restrict__ codes) {
  const int64_t total = rows * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t c = int32_t(i / rows);
    const int64_t n = i - int64_t(c) * rows;
    float score[kCodes];
#pragma unroll
    for (int k = 0; k < kCodes; ++k) score[k] = __ldg(biases + kCodes * c + k);
    const float* row = x + n * D;
    const int32_t end = __ldg(bounds + c + 1);
    for (int32_t d = __ldg(bounds + c); d < end; ++d) {
      const float v = row[d];
#pragma unroll
      for (int k = 0; k < kCodes; ++k) score[k] = __fadd_rn(score[k], __fmul_rn(v, __ldg(vectors + int64_t(k) * D + d)));
    }
    int best = 0;
    float best_score = score[0];
#pragma unroll
    for (int k = 1; k < kCodes; ++k) {
      if (score[k] < best_score) {
        best = k;
        best_score = score[k];
      }
    }
    codes[n * C + c] = uint8_t(best);
  }
}

// ---- lookup ---------------------------------------------------------------------------------------------------
// A block owns a tile of `tile_m` output columns and keeps that tile's LUT ([C][16][tile_m] int8) in shared memory
// for its whole life, walking row passes grid-stride: the LUT is read from global memory once per block, so the
// kernel is bound by the output write. Each thread owns 4 consecutive columns: one 32-bit shared load per codebook
// fetches 4 entries, and the 4 results leave as one 16-byte store when the row is aligned.
__device__ __forceinline__ void add_bytes(int (&acc)[4], uint32_t packed) {
  acc[0] += int(int8_t(packed & 0xff));
  acc[1] += int(int8_t((packed >> 8) & 0xff));
  acc[2] += int(int8_t((packed >> 16) & 0xff));
  acc[3] += int(int8_t(packed >> 24));
}

template <bool kLutInShared>
__global__ void lookup_kernel(const uint8_t* __restrict__ codes, int64_t rows, int32_t C, int32_t M, int32_t m_pad,
                              const int8_t* __restrict__ lut_packed, const float* __restrict__ scale,
                              const float* __restrict__ offset, float* __restrict__ y, int32_t tile_m) {
  extern __shared__ uint32_t shared_lut[];
  const int threads_per_row = tile_m / 4;
  const int rows_per_pass = blockDim.x / threads_per_row;
  const int lane = threadIdx.x % threads_per_row;
  const int row_in_pass = threadIdx.x / threads_per_row;
  const int32_t m0 = blockIdx.x * tile_m;
  const int32_t m = m0 + 4 * lane;

  const uint32_t* lut_words;  // [C * 16][words_per_row]
  int32_t words_per_row;
  if constexpr (kLutInShared) {
    words_per_row = tile_m / 4;
    const int32_t total = C * kCodes * words_per_row;
    const uint32_t* src = reinterpret_cast<const uint32_t*>(lut_packed);
    for (int32_t w = threadIdx.x; w < total; w += blockDim.x) {
      const int32_t ck = w / words_per_row;
      const int32_t col = m0 + 4 * (w - ck * words_per_row);
      shared_lut[w] = col < m_pad ? __ldg(src + (int64_t(ck) * m_pad + col) / 4) : 0u;
    }
    __syncthreads();
    lut_words = shared_lut + lane;
  } else {
    words_per_row = m_pad / 4;
    lut_words = reinterpret_cast<const uint32_t*>(lut_packed) + m / 4;
  }
  if (m >= m_pad) return;  // after the barrier: this thread's columns are past the table

  float s[4], o[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    s[j] = m + j < M ? __ldg(scale + m + j) : 0.f;
    o[j] = m + j < M ? __ldg(offset + m + j) : 0.f;
  }
  const bool vector_store = (M % 4 == 0) && (m + 3 < M);

  for (int64_t n = int64_t(blockIdx.y) * rows_per_pass + row_in_pass; n < rows;
       n += int64_t(gridDim.y) * rows_per_pass) {
    const uint8_t* row_codes = codes + n * C;
    int acc[4] = {0, 0, 0, 0};
    for (int32_t c = 0; c < C; ++c) {
      const int code = __ldg(row_codes + c) & 15;
      const int64_t word = int64_t(c * kCodes + code) * words_per_row;
      add_bytes(acc, kLutInShared ? lut_words[word] : __ldg(lut_words + word));
    }
    float out[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = __fadd_rn(__fmul_rn(s[j], float(acc[j])), o[j]);
    float* dst = y + n * M + m;
    if (vector_store) {
      *reinterpret_cast<float4*>(dst) = make_float4(out[0], out[1], out[2], out[3]);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (m + j < M) dst[j] = out[j];
    }
  }
}

int device_sm_count() {
  int device = 0, sms = 1;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return std::max(sms, 1);
}

int device_shared_optin() {
  int device = 0, bytes = 48 * 1024;
  if (cudaGetDevice(&device) == cudaSuccess)
    cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return bytes;
}

unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  const int64_t cap = int64_t(device_sm_count()) * 32;
  return unsigned(std::max<int64_t>(1, std::min(blocks, cap)));
}

}  // namespace

cudaError_t encode_tree(const float* x, int64_t rows, int32_t D, int32_t C, const int32_t* dims,
                        const float* thresholds, uint8_t* codes, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  encode_tree_kernel<<<grid_for(rows * C, kThreads), kThreads, 0, stream>>>(x, rows, D, C, dims, thresholds, codes);
  return cudaGetLastError();
}

cudaError_t encode_pq(const float* x, int64_t rows, int32_t D, int32_t C, const int32_t* bounds,
                      const float* vectors, const float* biases, uint8_t* codes, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  encode_pq_kernel<<<grid_for(rows * C, kThreads), kThreads, 0, stream>>>(x, rows, D, C, bounds, vectors, biases,
                                                                           codes);
  return cudaGetLastError();
}

cudaError_t lookup(const uint8_t* codes, int64_t rows, int32_t C, int32_t M, int32_t m_pad, const int8_t* lut_packed,
                   const float* scale, const float* offset, float* y, cudaStream_t stream) {
  if (rows == 0 || M == 0) return cudaSuccess;
  // The widest column tile whose LUT fits the block's shared memory; half the opt-in limit leaves room for two
  // resident blocks per SM.
  const int64_t budget = device_shared_optin() / 2;
  int tile_m = 128;
  while (tile_m > 4 && int64_t(C) * kCodes * tile_m > budget) tile_m /= 2;
  const bool in_shared = int64_t(C) * kCodes * tile_m <= budget;
  const int rows_per_pass = kThreads / (tile_m / 4);
  const unsigned tiles_m = unsigned((M + tile_m - 1) / tile_m);
  const int64_t passes = (rows + rows_per_pass - 1) / rows_per_pass;
  const int64_t want_blocks = int64_t(device_sm_count()) * 8;
  const unsigned tiles_rows =
      unsigned(std::max<int64_t>(1, std::min<int64_t>({passes, (want_blocks + tiles_m - 1) / tiles_m, 65535})));
  const dim3 grid(tiles_m, tiles_rows);
  if (in_shared) {
    const size_t smem = size_t(C) * kCodes * tile_m;
    cudaError_t err = cudaFuncSetAttribute(lookup_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
    lookup_kernel<true><<<grid, kThreads, smem, stream>>>(codes, rows, C, M, m_pad, lut_packed, scale, offset, y,
                                                          tile_m);
  } else {
    lookup_kernel<false><<<grid, kThreads, 0, stream>>>(codes, rows, C, M, m_pad, lut_packed, scale, offset, y, tile_m);
  }
  return cudaGetLastError();
}

}  // namespace halut::cuda
