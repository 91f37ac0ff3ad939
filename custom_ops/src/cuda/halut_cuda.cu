// CUDA kernels for the Halut ops. Evaluation order and rounding follow docs/ops.md exactly: products and sums are
// written __fmul_rn / __fadd_rn, which nvcc never contracts into an FMA, so codes and outputs are bit-identical to
// the numpy reference and the CPU kernels. Comparisons are plain `>` / `<` (false for NaN, as the spec's scans).
#include "halut_cuda.h"

namespace halut::cuda {
namespace {

// ---- encode: tree ---------------------------------------------------------------------------------------------
// One thread per (row, codebook), codebook fastest: a warp's 4 column reads per level fall in one or two rows'
// cache lines, while codebook-major would put 32 different rows (D * 4 bytes apart) under every load.
__global__ void encode_tree_kernel(const float* __restrict__ x, int64_t rows, int64_t D, TreeWeights w,
                                   uint8_t* __restrict__ codes) {
  const int64_t total = rows * w.C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / w.C;
    const int32_t c = int32_t(i - n * w.C);
    const float* row = x + n * D;
    const int32_t* d = w.dims + 4 * c;
    const float* t = w.thresholds + 16 * c;
    int node = 0;
#pragma unroll
    for (int level = 0; level < 4; ++level) {
      const float v = __ldg(row + __ldg(d + level));
      node = 2 * node + (v > __ldg(t + (1 << level) - 1 + node) ? 1 : 0);
    }
    codes[i] = uint8_t(node);
  }
}

// ---- encode: pq -----------------------------------------------------------------------------------------------
// score[k] = fl32(score[k] + fl32(v * vectors[k, d])) for one element v; vectors_t rows are 64-byte aligned
// (device allocations are 256-byte aligned and a row is 16 floats), so 4 float4 loads fetch the 16 prototypes.
__device__ __forceinline__ void pq_accumulate(float (&score)[kCodes], float v, const float* __restrict__ vt_row) {
  const float4* v4 = reinterpret_cast<const float4*>(vt_row);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float4 p = __ldg(v4 + q);
    score[4 * q + 0] = __fadd_rn(score[4 * q + 0], __fmul_rn(v, p.x));
    score[4 * q + 1] = __fadd_rn(score[4 * q + 1], __fmul_rn(v, p.y));
    score[4 * q + 2] = __fadd_rn(score[4 * q + 2], __fmul_rn(v, p.z));
    score[4 * q + 3] = __fadd_rn(score[4 * q + 3], __fmul_rn(v, p.w));
  }
}

// The scan of docs/ops.md: the first strictly smaller score wins, so ties keep the lower index and a NaN score
// (never < anything) never wins; a NaN at prototype 0 keeps code 0 since nothing compares < NaN.
__device__ __forceinline__ int pq_argmin(const float (&score)[kCodes]) {
  int best = 0;
  float best_score = score[0];
#pragma unroll
  for (int k = 1; k < kCodes; ++k) {
    if (score[k] < best_score) {
      best = k;
      best_score = score[k];
    }
  }
  return best;
}

// One thread per (row, codebook). A warp is one codebook for 32 consecutive rows: it shares the codebook's
// prototypes (broadcast loads) while each thread walks its own row slice. Consecutive warps take the next codebooks
// of the same 32 rows, so the C warps that read a row's slices run close together and DRAM serves X a few whole
// rows at a time; codebook-major order (all rows' slice c, then all rows' slice c + 1) read each row of X in C
// separate passes over all of X, 64 bytes at a time at D / C = 16. The 32 rows of a warp are 32 different lines of
// X, so each load of X costs one L1 wavefront per thread: with `slices_of_4` (X 16-byte aligned, D and every slice
// bound a multiple of 4) the slice is read 4 floats per load, a quarter of the wavefronts.
__global__ void encode_pq_kernel(const float* __restrict__ x, int64_t rows, PqWeights w,
                                 uint8_t* __restrict__ codes) {
  const int64_t total = pq_threads(rows, w.C);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t warp = i / 32, block = warp / w.C;  // block of 32 rows
    const int32_t c = int32_t(warp - block * w.C);
    const int64_t n = block * 32 + i % 32;
    if (n >= rows) continue;
    float score[kCodes];
#pragma unroll
    for (int k = 0; k < kCodes; ++k) score[k] = __ldg(w.biases + kCodes * c + k);
    const float* row = x + n * w.D;
    const int64_t end = __ldg(w.bounds + c + 1);
    int64_t d = __ldg(w.bounds + c);
    if (w.slices_of_4) {
      for (; d < end; d += 4) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(row + d));
        const float* vt = w.vectors_t + d * kCodes;
        pq_accumulate(score, v.x, vt);
        pq_accumulate(score, v.y, vt + kCodes);
        pq_accumulate(score, v.z, vt + 2 * kCodes);
        pq_accumulate(score, v.w, vt + 3 * kCodes);
      }
    }
    for (; d < end; ++d) pq_accumulate(score, __ldg(row + d), w.vectors_t + d * kCodes);
    codes[n * w.C + c] = uint8_t(pq_argmin(score));
  }
}

// ---- encode: conv (patch rows read straight from NCHW) ----------------------------------------------------------
// Codebook-major threads, output position fastest: a warp reads one patch element at 32 consecutive positions, i.e.
// consecutive addresses of X for stride 1. Geometry fits int32 (checked by the host layer); offsets are int64.

struct Position {
  const float* image;  // x + b * Cin * H * W
  int32_t iy0, ix0;    // the patch's top-left input position (may be negative: padding)
};

__device__ __forceinline__ Position position(const float* x, const ConvShape& s, int64_t n) {
  const int64_t P = int64_t(s.Ho) * s.Wo;
  const int64_t b = n / P;
  const int32_t p = int32_t(n - b * P);
  const int32_t oy = p / s.Wo, ox = p - oy * s.Wo;
  return {x + b * s.Cin * int64_t(s.H) * s.W, oy * s.sh - s.top, ox * s.sw - s.left};
}

// Patch element (ci, ky, kx) of a position: 0 outside the image.
__device__ __forceinline__ float patch_element(const Position& at, const ConvShape& s, int32_t ci, int32_t ky,
                                               int32_t kx) {
  const int32_t iy = at.iy0 + ky * s.dh, ix = at.ix0 + kx * s.dw;
  return (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W) ? __ldg(at.image + (int64_t(ci) * s.H + iy) * s.W + ix) : 0.f;
}

__global__ void encode_tree_conv_kernel(const float* __restrict__ x, ConvShape s, TreeWeights w,
                                        uint8_t* __restrict__ codes) {
  const int64_t N = s.B * s.Ho * int64_t(s.Wo);
  const int64_t total = N * w.C;
  const int32_t taps = s.kh * s.kw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t c = int32_t(i / N);
    const int64_t n = i - int64_t(c) * N;
    const Position at = position(x, s, n);
    const int32_t* dims = w.dims + 4 * c;
    const float* t = w.thresholds + 16 * c;
    int node = 0;
#pragma unroll
    for (int level = 0; level < 4; ++level) {
      const int32_t d = __ldg(dims + level);
      const int32_t ci = d / taps, r = d - ci * taps, ky = r / s.kw, kx = r - ky * s.kw;
      const float v = patch_element(at, s, ci, ky, kx);
      node = 2 * node + (v > __ldg(t + (1 << level) - 1 + node) ? 1 : 0);
    }
    codes[n * w.C + c] = uint8_t(node);
  }
}

// Padding elements are multiplied in like any other (fl32(0 * v) is what the reference adds, NaN for an infinite
// v), so the result is the reference's even for non-finite prototypes.
__global__ void encode_pq_conv_kernel(const float* __restrict__ x, ConvShape s, PqWeights w,
                                      uint8_t* __restrict__ codes) {
  const int64_t N = s.B * s.Ho * int64_t(s.Wo);
  const int64_t total = N * w.C;
  const int32_t taps = s.kh * s.kw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t c = int32_t(i / N);
    const int64_t n = i - int64_t(c) * N;
    const Position at = position(x, s, n);
    float score[kCodes];
#pragma unroll
    for (int k = 0; k < kCodes; ++k) score[k] = __ldg(w.biases + kCodes * c + k);
    const int32_t begin = int32_t(__ldg(w.bounds + c)), end = int32_t(__ldg(w.bounds + c + 1));
    // (ci, ky, kx) of patch index d, stepped along d in the spec's order.
    int32_t ci = begin / taps, r = begin - ci * taps, ky = r / s.kw, kx = r - ky * s.kw;
    for (int32_t d = begin; d < end; ++d) {
      pq_accumulate(score, patch_element(at, s, ci, ky, kx), w.vectors_t + int64_t(d) * kCodes);
      if (++kx == s.kw) {
        kx = 0;
        if (++ky == s.kh) {
          ky = 0;
          ++ci;
        }
      }
    }
    codes[n * w.C + c] = uint8_t(pq_argmin(score));
  }
}

// ---- lookup ---------------------------------------------------------------------------------------------------
// A thread sums, per row, the entries of a few 4-column words: one 32-bit LUT word per (codebook, code) holds a
// word's 4 entries (the code-major layout puts m contiguous). The device copy of the LUT is biased to unsigned
// (entry + 128, i.e. the int8 bits ^ 0x80), so per word the thread keeps the wrapping 32-bit sum of the words
// (`all`) and the sum of bytes 1 and 3 in 16-bit lanes (`odd`, one byte_perm per word). With every lane below
// 2^16 (emptied every kLaneChunk = 256 codebooks), all - (odd << 8) is exactly the sum of bytes 0 and 2 in 16-bit
// lanes: two integer operations per 4 entries where spreading both halves takes four. 128 C is subtracted at the end.
constexpr int32_t kLaneChunk = 256;

template <int kWords>
struct Lanes {
  uint32_t all[kWords] = {}, odd[kWords] = {};
};

// Word k of two codebooks at once. The integer pipe (IADD3, PRMT, LOP3, SHF: half rate) bounded the lookups while
// the FMA pipe, which adds integers too (IMAD, half rate), sat nearly idle: `one` is 1, passed as a kernel argument
// so that the compiler cannot fold it, and `x * one + sum` stays an IMAD. The raw-word sum stays a 3-input add
// (IADD3) and the byte_perm sums go to the FMA pipe (benchmarks/sass_mix.py counts the split).
template <int kWords>
__device__ __forceinline__ void add_words(Lanes<kWords>& l, int k, uint32_t a, uint32_t b, uint32_t one) {
  l.all[k] += a + b;
  l.odd[k] = __byte_perm(b, 0u, 0x4341) * one + (__byte_perm(a, 0u, 0x4341) * one + l.odd[k]);
}

__device__ __forceinline__ void add_pair(Lanes<4>& l, const uint4 a, const uint4 b, uint32_t one) {
  add_words(l, 0, a.x, b.x, one);
  add_words(l, 1, a.y, b.y, one);
  add_words(l, 2, a.z, b.z, one);
  add_words(l, 3, a.w, b.w, one);
}

__device__ __forceinline__ void add_pair(Lanes<2>& l, const uint2 a, const uint2 b, uint32_t one) {
  add_words(l, 0, a.x, b.x, one);
  add_words(l, 1, a.y, b.y, one);
}

// One codebook (the paths that read codes one by one).
template <int kWords>
__device__ __forceinline__ void add_word(Lanes<kWords>& l, int k, uint32_t e) {
  l.all[k] += e;
  l.odd[k] += __byte_perm(e, 0u, 0x4341);
}
__device__ __forceinline__ void add_entries(Lanes<4>& l, const uint4 e) {
  add_word(l, 0, e.x);
  add_word(l, 1, e.y);
  add_word(l, 2, e.z);
  add_word(l, 3, e.w);
}
__device__ __forceinline__ void add_entries(Lanes<2>& l, const uint2 e) {
  add_word(l, 0, e.x);
  add_word(l, 1, e.y);
}

// A row's sums leave the lanes as floats without a conversion instruction (the int-to-float conversion and the
// extraction of a 16-bit lane were integer-pipe work, 2 per output): the float whose bits are kMagicBits + s is
// exactly 1.5 * 2^23 + s for 0 <= s < 2^22, so the lane sums are put into the low bits of kMagicBits and
// fl32(that - (1.5 * 2^23 + 128 C)) is exactly S, both operands being integers below 2^24. That holds while
// 255 C < 2^22 (C <= kMagicMaxC); larger C (the LUT then comes from global memory) converts as before.
constexpr uint32_t kMagicBits = 0x4B400000u;  // 1.5 * 2^23; its low 16 bits are 0
constexpr int32_t kMagicMaxC = 16448;

// acc = kMagicBits + the lane sums, columns 4k .. 4k+3 at acc[4k ..]: the first chunk of codebooks puts them in
// with one byte_perm each (lane bytes below, the magic's two high bytes above) ...
template <int kWords>
__device__ __forceinline__ void start_sums(const Lanes<kWords>& l, uint32_t (&acc)[4 * kWords]) {
#pragma unroll
  for (int k = 0; k < kWords; ++k) {
    const uint32_t even = l.all[k] - (l.odd[k] << 8);
    acc[4 * k] = __byte_perm(even, kMagicBits, 0x7610);
    acc[4 * k + 1] = __byte_perm(l.odd[k], kMagicBits, 0x7610);
    acc[4 * k + 2] = __byte_perm(even, kMagicBits, 0x7632);
    acc[4 * k + 3] = __byte_perm(l.odd[k], kMagicBits, 0x7632);
  }
}

// ... and every further chunk of 256 (C > 256) is added.
template <int kWords>
__device__ __forceinline__ void add_sums(const Lanes<kWords>& l, uint32_t (&acc)[4 * kWords]) {
#pragma unroll
  for (int k = 0; k < kWords; ++k) {
    const uint32_t even = l.all[k] - (l.odd[k] << 8);
    acc[4 * k] += even & 0xffffu;
    acc[4 * k + 1] += l.odd[k] & 0xffffu;
    acc[4 * k + 2] += even >> 16;
    acc[4 * k + 3] += l.odd[k] >> 16;
  }
}

// float(S) for an accumulator of start_sums / add_sums; `shift` = fl32(1.5 * 2^23 + 128 C). A shared-memory LUT
// tile (kShared) holds C * 16 bytes per column, for 16 columns at least (8 in half the opt-in for NCHW), within the
// opt-in shared memory (C <= 908 on an H100; kMagicMaxC would take 4 MB), so only the global-memory kernels need
// the conversion, for large C.
template <bool kShared>
__device__ __forceinline__ float sum_value(uint32_t acc, int32_t C, float shift) {
  if (kShared || C <= kMagicMaxC) return __fsub_rn(__uint_as_float(acc), shift);
  return float(int32_t(acc - kMagicBits) - 128 * C);  // the wrapping sum: exact while 255 C < 2^31
}

__device__ __forceinline__ float magic_shift(int32_t C) { return float(12582912 + 128 * min(C, kMagicMaxC)); }

// y = fl32(fl32(scale * float(S)) + offset); float(S) is exact (|S| <= 128 C < 2^24).
__device__ __forceinline__ float finish(float scale, float sum, float offset) {
  return __fadd_rn(__fmul_rn(scale, sum), offset);
}

// Code j (0..3) of a word holding 4 consecutive codes, masked to 4 bits.
__device__ __forceinline__ uint32_t code_of(uint32_t four, int j) { return (four >> (8 * j)) & 15u; }

// Row-major Y[rows][M] (plan_lookup): a block owns kTile consecutive columns and a thread 16 of them, kTile / 16
// threads (lanes) per row and blockDim / that many rows per pass. Lane l owns the four 4-column words at columns
// 4 l + 4 (kTile / 4) k, k = 0..3, not 16 contiguous columns: then the 4-byte-per-column outputs of a row's lanes
// (and their scale and offset) are contiguous for each k, so every store and load of the epilogue is coalesced.
// The shared tile [C * 16][kTile] is laid out to match: line (codebook, code) holds, at lane l's 16 bytes, the
// entries of l's four words, so one conflict-free 16-byte load per codebook fetches all 16 (at kTile = 128 a
// quarter warp is one row reading one 128-byte line). Past half the opt-in shared memory the LUT is read from
// global memory (kTile = 128, four 4-byte loads per codebook). Shared-memory bandwidth (one byte per entry, 16
// cycles of an SM sub-partition per codebook) is the floor, so the integer and FMA work per codebook is kept below
// it (benchmarks/sass_mix.py).

// x >> s for s > 0 as the high word of x * 2^(32 - s), an IMAD.HI on the FMA pipe instead of a shift on the integer
// pipe; x << -s otherwise (an IMAD.SHL already). s is known at compile time.
template <int s>
__device__ __forceinline__ uint32_t shift_right(uint32_t x) {
  if constexpr (s > 0) {
    return __umulhi(x, 1u << (32 - s));
  } else {
    return x << -s;
  }
}

// The line of codebook c + kJ for the code in byte kJ % 4 of `word` (see sum_16_shared).
template <int kTile, int kJ>
__device__ __forceinline__ uint4 shared_line(const char* tile, uint32_t base, uint32_t word) {
  static_assert(kTile == 16 || kTile == 32 || kTile == 64 || kTile == 128, "plan_lookup's tiles");
  constexpr int kShift = kTile == 128 ? 7 : kTile == 64 ? 6 : kTile == 32 ? 5 : 4;
  const uint32_t offset = (shift_right<8 * (kJ % 4) - kShift>(word) & (15u << kShift)) | base;
  return *reinterpret_cast<const uint4*>(tile + offset + kJ * kCodes * kTile);
}

// The hot loop of the shared-tile lookup: 16 codebooks c .. c+15 whose codes are the 16 bytes of q. `base` is the
// thread's byte offset in the tile at codebook c (lane * 16 + c * 16 * kTile, c a multiple of 16), so a code's
// offset (code * kTile < 16 kTile) has no bit in common with it: one shift and one 3-input logic op (mask, or)
// make each address, and codebook j's line is an immediate offset of the load.
template <int kTile>
__device__ __forceinline__ void sum_16_shared(const char* tile, uint32_t base, const uint4 q, Lanes<4>& l,
                                              uint32_t one) {
  add_pair(l, shared_line<kTile, 0>(tile, base, q.x), shared_line<kTile, 1>(tile, base, q.x), one);
  add_pair(l, shared_line<kTile, 2>(tile, base, q.x), shared_line<kTile, 3>(tile, base, q.x), one);
  add_pair(l, shared_line<kTile, 4>(tile, base, q.y), shared_line<kTile, 5>(tile, base, q.y), one);
  add_pair(l, shared_line<kTile, 6>(tile, base, q.y), shared_line<kTile, 7>(tile, base, q.y), one);
  add_pair(l, shared_line<kTile, 8>(tile, base, q.z), shared_line<kTile, 9>(tile, base, q.z), one);
  add_pair(l, shared_line<kTile, 10>(tile, base, q.z), shared_line<kTile, 11>(tile, base, q.z), one);
  add_pair(l, shared_line<kTile, 12>(tile, base, q.w), shared_line<kTile, 13>(tile, base, q.w), one);
  add_pair(l, shared_line<kTile, 14>(tile, base, q.w), shared_line<kTile, 15>(tile, base, q.w), one);
}

// Blocks of up to 768 threads, 768 per SM (plan_lookup): a register cap of 85 that the kernel fits unspilled but for
// the 16-column tile of C = 455 .. 908 (16 bytes: one reload per row). `one` must be 1 (see add_words).
template <int kTile, bool kShared>
__global__ void __launch_bounds__(kLookupThreadsPerSm, 1) lookup_kernel(const uint8_t* __restrict__ codes, int64_t rows,
                                                          LutWeights w, float* __restrict__ y, int load,
                                                          bool vector_ok, uint32_t one) {
  constexpr int kLanes = kTile / 16;  // threads per row
  extern __shared__ __align__(16) uint32_t shared_lut[];
  const int lane = threadIdx.x % kLanes, row_in_pass = threadIdx.x / kLanes;
  const int rows_per_pass = blockDim.x / kLanes;
  const int32_t m0 = blockIdx.x * kTile;
  int32_t col[4];  // first column of each of the thread's words
#pragma unroll
  for (int k = 0; k < 4; ++k) col[k] = m0 + 4 * lane + 4 * kLanes * k;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(w.lut);
  const uint4* tile = reinterpret_cast<const uint4*>(shared_lut) + lane;
  if constexpr (kShared) {
    uint4* fill = reinterpret_cast<uint4*>(shared_lut);
    const int32_t total = w.C * kCodes * kLanes;
    for (int32_t i = threadIdx.x; i < total; i += blockDim.x) {
      const int32_t ck = i / kLanes, l = i % kLanes;
      uint32_t word[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int32_t m = m0 + 4 * l + 4 * kLanes * k;
        word[k] = m < w.m_pad ? __ldg(src + (int64_t(ck) * w.m_pad + m) / 4) : 0u;
      }
      fill[i] = make_uint4(word[0], word[1], word[2], word[3]);
    }
    __syncthreads();
  }
  if (col[0] >= w.M) return;  // after the barrier; no thread past it waits on another
  // The thread's 16 entries of codebook c for code `code`.
  const auto entries = [&](int32_t c, uint32_t code) -> uint4 {
    if constexpr (kShared) {
      return tile[(c * kCodes + int32_t(code)) * kLanes];
    } else {
      const int64_t line = (int64_t(c) * kCodes + code) * w.m_pad;
      uint32_t word[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) word[k] = col[k] < w.m_pad ? __ldg(src + (line + col[k]) / 4) : 0u;
      return make_uint4(word[0], word[1], word[2], word[3]);
    }
  };

  // Per thread, not per row: its 4 words all inside Y and 16-byte aligned (one float4 store each).
  const bool whole_words = vector_ok && col[3] + 4 <= w.M;
  const float shift = magic_shift(w.C);
  const int64_t row_step = int64_t(gridDim.y) * rows_per_pass;
  int64_t n = int64_t(blockIdx.y) * rows_per_pass + row_in_pass;
  // The next 16 codes to sum. Across rows too: a row's first load is issued while the previous row is summed and
  // written, so a warp does not wait for it at every row (every warp of a block would, at about the same time).
  uint4 ahead = load == kCodeVectors && n < rows ? __ldg(reinterpret_cast<const uint4*>(codes + n * w.C))
                                                 : make_uint4(0u, 0u, 0u, 0u);
  for (; n < rows; n += row_step) {
    const uint8_t* row = codes + n * w.C;
    // Where the row's last load fetches ahead from: the next row's codes, or this row's again past the last row
    // (a valid address, so the load needs no branch).
    const uint4* next_row = reinterpret_cast<const uint4*>(n + row_step < rows ? row + row_step * w.C : row);
    uint32_t acc[16];
    for (int32_t c0 = 0; c0 < w.C; c0 += kLaneChunk) {
      const int32_t c1 = min(w.C, c0 + kLaneChunk);
      int32_t c = c0;
      Lanes<4> lanes;
      if (load == kCodeVectors) {  // C % 16 == 0: the chunk is whole loads
        const uint4* q = reinterpret_cast<const uint4*>(row);
        for (; c + 16 <= c1; c += 16) {
          const uint4 cur = ahead;
          ahead = __ldg(c + 16 < w.C ? q + c / 16 + 1 : next_row);
          if constexpr (kShared) {
            sum_16_shared<kTile>(reinterpret_cast<const char*>(shared_lut),
                                 uint32_t(16 * lane) + uint32_t(c) * kCodes * kTile, cur, lanes, one);
          } else {
            const uint32_t words[4] = {cur.x, cur.y, cur.z, cur.w};
#pragma unroll
            for (int j = 0; j < 16; ++j) add_entries(lanes, entries(c + j, code_of(words[j / 4], j % 4)));
          }
        }
      } else if (load == kCodeWords) {
        const uint32_t* q = reinterpret_cast<const uint32_t*>(row);
        for (; c + 4 <= c1; c += 4) {
          const uint32_t four = __ldg(q + c / 4);
#pragma unroll
          for (int j = 0; j < 4; ++j) add_entries(lanes, entries(c + j, code_of(four, j)));
        }
      }
      for (; c < c1; ++c) add_entries(lanes, entries(c, uint32_t(__ldg(row + c)) & 15u));
      if (c0 == 0) {
        start_sums(lanes, acc);
      } else {
        add_sums(lanes, acc);
      }
    }
    float* dst = y + n * w.M;
    // scale / offset are padded to m_pad (a multiple of 16), so a word's 4 columns are readable.
    const auto word_out = [&](int k) {
      const float4 s = __ldg(reinterpret_cast<const float4*>(w.scale + col[k]));
      const float4 o = __ldg(reinterpret_cast<const float4*>(w.offset + col[k]));
      return make_float4(finish(s.x, sum_value<kShared>(acc[4 * k], w.C, shift), o.x),
                         finish(s.y, sum_value<kShared>(acc[4 * k + 1], w.C, shift), o.y),
                         finish(s.z, sum_value<kShared>(acc[4 * k + 2], w.C, shift), o.z),
                         finish(s.w, sum_value<kShared>(acc[4 * k + 3], w.C, shift), o.w));
    };
    if (whole_words) {
#pragma unroll
      for (int k = 0; k < 4; ++k) *reinterpret_cast<float4*>(dst + col[k]) = word_out(k);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (col[k] >= w.M) break;
        const float4 out = word_out(k);
        if (vector_ok && col[k] + 4 <= w.M) {
          *reinterpret_cast<float4*>(dst + col[k]) = out;
        } else {
          const float v[4] = {out.x, out.y, out.z, out.w};
          for (int j = 0; j < 4 && col[k] + j < w.M; ++j) dst[col[k] + j] = v[j];
        }
      }
    }
  }
}

// The 8-byte line of codebook c + kJ for the code in byte kJ % 4 of `word`, `lines` pointing at codebook c's: the
// code's offset (code * 8) is one shift and one mask, and the codebook an immediate offset of the load.
template <int kJ>
__device__ __forceinline__ uint2 nchw_line(const char* lines, uint32_t word) {
  const uint32_t offset = shift_right<8 * (kJ % 4) - 3>(word) & (15u << 3);
  return *reinterpret_cast<const uint2*>(lines + offset + kJ * kCodes * 8);
}

// 16 codebooks from the shared tile, their codes the 16 bytes of q.
__device__ __forceinline__ void sum_16_nchw(const char* lines, const uint4 q, Lanes<2>& l, uint32_t one) {
  add_pair(l, nchw_line<0>(lines, q.x), nchw_line<1>(lines, q.x), one);
  add_pair(l, nchw_line<2>(lines, q.x), nchw_line<3>(lines, q.x), one);
  add_pair(l, nchw_line<4>(lines, q.y), nchw_line<5>(lines, q.y), one);
  add_pair(l, nchw_line<6>(lines, q.y), nchw_line<7>(lines, q.y), one);
  add_pair(l, nchw_line<8>(lines, q.z), nchw_line<9>(lines, q.z), one);
  add_pair(l, nchw_line<10>(lines, q.z), nchw_line<11>(lines, q.z), one);
  add_pair(l, nchw_line<12>(lines, q.w), nchw_line<13>(lines, q.w), one);
  add_pair(l, nchw_line<14>(lines, q.w), nchw_line<15>(lines, q.w), one);
}

// NCHW Y[B][M][P] (plan_lookup_nchw): warp g of the block owns the kNchwColumns = 8 columns m0 + 8 g .. + 7 and
// its 32 lanes 32 consecutive positions, so each of a thread's 8 stores is, across the warp, 128 contiguous bytes
// of one plane. The shared tile is group-major, [G][C * 16] lines of 8 bytes (the group's 8 entries of one
// codebook and code): a codebook's 16 lines span one 128-byte row of banks, so the 8-byte loads of a half warp
// never conflict (lanes with equal codes broadcast) and a codebook costs 2 wavefronts per warp, one byte per
// entry as in the row-major kernel. The sums are the row-major kernel's, two words per thread, two codebooks at a
// time.
template <bool kShared>
__global__ void lookup_nchw_kernel(const uint8_t* __restrict__ codes, int64_t rows, int64_t P, LutWeights w,
                                   float* __restrict__ y, int load, uint32_t one) {
  extern __shared__ __align__(16) uint32_t shared_lut[];
  const int groups = blockDim.x / 32;
  const int g = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t m0 = blockIdx.x * kNchwColumns * groups;
  const int32_t m = m0 + kNchwColumns * g;
  // 8-byte units: m, m0 and m_pad are multiples of 8, so every group's line is one aligned uint2.
  const uint2* src = reinterpret_cast<const uint2*>(w.lut);
  const int32_t table = w.C * kCodes;

  const uint2* lines;  // line (c, code) of the warp's group: lines[(c * 16 + code) * stride]
  int64_t stride;
  if constexpr (kShared) {
    uint2* fill = reinterpret_cast<uint2*>(shared_lut);
    // Read in (codebook-code, group) order: consecutive threads load consecutive 8 bytes of global memory.
    for (int32_t i = threadIdx.x; i < table * groups; i += blockDim.x) {
      const int32_t ck = i / groups, gi = i - ck * groups;
      const int32_t col = m0 + kNchwColumns * gi;
      fill[gi * table + ck] = col < w.m_pad ? __ldg(src + (int64_t(ck) * w.m_pad + col) / 8) : make_uint2(0u, 0u);
    }
    __syncthreads();
    lines = fill + g * table;
    stride = 1;
  } else {
    lines = src + m / 8;
    stride = w.m_pad / 8;
  }
  if (m >= w.M) return;
  const auto line = [&](int32_t c, uint32_t code) -> uint2 {
    const int64_t i = (int64_t(c) * kCodes + code) * stride;
    if constexpr (kShared) {
      return lines[i];
    } else {
      return __ldg(lines + i);
    }
  };

  float s[kNchwColumns], o[kNchwColumns];
#pragma unroll
  for (int j = 0; j < kNchwColumns; ++j) {
    s[j] = m + j < w.M ? __ldg(w.scale + m + j) : 0.f;
    o[j] = m + j < w.M ? __ldg(w.offset + m + j) : 0.f;
  }
  const float shift = magic_shift(w.C);
  const int64_t row_step = int64_t(gridDim.y) * 32;
  int64_t n = int64_t(blockIdx.y) * 32 + lane;
  // The next 16 codes, fetched a step ahead, across rows too (as in lookup_kernel).
  uint4 ahead = load == kCodeVectors && n < rows ? __ldg(reinterpret_cast<const uint4*>(codes + n * w.C))
                                                 : make_uint4(0u, 0u, 0u, 0u);
  for (; n < rows; n += row_step) {
    const uint8_t* row = codes + n * w.C;
    const uint4* next_row = reinterpret_cast<const uint4*>(n + row_step < rows ? row + row_step * w.C : row);
    uint32_t acc[kNchwColumns];
    for (int32_t c0 = 0; c0 < w.C; c0 += kLaneChunk) {
      const int32_t c1 = min(w.C, c0 + kLaneChunk);
      int32_t c = c0;
      Lanes<2> lanes;
      if (load == kCodeVectors) {
        const uint4* q = reinterpret_cast<const uint4*>(row);
        for (; c + 16 <= c1; c += 16) {
          const uint4 v = ahead;
          ahead = __ldg(c + 16 < w.C ? q + c / 16 + 1 : next_row);
          if constexpr (kShared) {
            sum_16_nchw(reinterpret_cast<const char*>(lines + int64_t(c) * kCodes), v, lanes, one);
          } else {
            const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 16; j += 2)
              add_pair(lanes, line(c + j, code_of(words[j / 4], j % 4)),
                       line(c + j + 1, code_of(words[j / 4], j % 4 + 1)), one);
          }
        }
      } else if (load == kCodeWords) {
        const uint32_t* q = reinterpret_cast<const uint32_t*>(row);
        for (; c + 4 <= c1; c += 4) {
          const uint32_t four = __ldg(q + c / 4);
          add_pair(lanes, line(c, code_of(four, 0)), line(c + 1, code_of(four, 1)), one);
          add_pair(lanes, line(c + 2, code_of(four, 2)), line(c + 3, code_of(four, 3)), one);
        }
      }
      for (; c < c1; ++c) add_entries(lanes, line(c, uint32_t(__ldg(row + c)) & 15u));
      if (c0 == 0) {
        start_sums(lanes, acc);
      } else {
        add_sums(lanes, acc);
      }
    }
    const int64_t b = n / P, p = n - b * P;
    float* dst = y + (b * w.M + m) * P + p;
#pragma unroll
    for (int j = 0; j < kNchwColumns; ++j)
      if (m + j < w.M) dst[j * P] = finish(s[j], sum_value<kShared>(acc[j], w.C, shift), o[j]);
  }
}

bool aligned(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; }

// Dynamic shared memory above 48 KB needs the kernel's opt-in (a host-side attribute, no synchronization).
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

}  // namespace

cudaError_t query_device(DeviceInfo* out) {
  DeviceInfo d;
  cudaError_t err = cudaGetDevice(&d.id);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, d.id);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, d.id);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, d.id);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&d.max_threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, d.id);
  if (err == cudaSuccess) *out = d;
  return err;
}

cudaError_t encode_tree(const DeviceInfo& dev, const float* x, int64_t rows, int64_t D, const TreeWeights& w,
                        uint8_t* codes, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  encode_tree_kernel<<<grid_1d(rows * w.C, dev), kThreads, 0, stream>>>(x, rows, D, w, codes);
  return cudaGetLastError();
}

cudaError_t encode_pq(const DeviceInfo& dev, const float* x, int64_t rows, const PqWeights& w, uint8_t* codes,
                      cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  PqWeights v = w;
  v.slices_of_4 = w.slices_of_4 && aligned(x, 16);
  encode_pq_kernel<<<grid_1d(pq_threads(rows, w.C), dev), kThreads, 0, stream>>>(x, rows, v, codes);
  return cudaGetLastError();
}

cudaError_t encode_tree_conv(const DeviceInfo& dev, const float* x, const ConvShape& s, const TreeWeights& w,
                             uint8_t* codes, cudaStream_t stream) {
  const int64_t N = s.B * s.Ho * int64_t(s.Wo);
  if (N == 0) return cudaSuccess;
  encode_tree_conv_kernel<<<grid_1d(N * w.C, dev), kThreads, 0, stream>>>(x, s, w, codes);
  return cudaGetLastError();
}

cudaError_t encode_pq_conv(const DeviceInfo& dev, const float* x, const ConvShape& s, const PqWeights& w,
                           uint8_t* codes, cudaStream_t stream) {
  const int64_t N = s.B * s.Ho * int64_t(s.Wo);
  if (N == 0) return cudaSuccess;
  encode_pq_conv_kernel<<<grid_1d(N * w.C, dev), kThreads, 0, stream>>>(x, s, w, codes);
  return cudaGetLastError();
}

template <int kTile, bool kShared>
cudaError_t launch_lookup(const LookupPlan& p, const uint8_t* codes, int64_t rows, const LutWeights& w, float* y,
                          int load, bool vector_ok, cudaStream_t stream) {
  if (cudaError_t err = allow_smem(lookup_kernel<kTile, kShared>, p.smem_bytes)) return err;
  lookup_kernel<kTile, kShared><<<dim3(p.grid_x, p.grid_y), p.threads, p.smem_bytes, stream>>>(codes, rows, w, y,
                                                                                                 load, vector_ok, 1u);
  return cudaGetLastError();
}

cudaError_t lookup(const DeviceInfo& dev, const uint8_t* codes, int64_t rows, const LutWeights& w, float* y,
                   cudaStream_t stream) {
  if (rows == 0 || w.M == 0) return cudaSuccess;
  const LookupPlan p = plan_lookup(rows, w.C, w.M, dev);
  const int load = code_load(w.C, codes);
  const bool vector_ok = w.M % 4 == 0 && aligned(y, 16);
  if (!p.lut_in_shared) return launch_lookup<128, false>(p, codes, rows, w, y, load, vector_ok, stream);
  switch (p.tile_m) {
    case 128: return launch_lookup<128, true>(p, codes, rows, w, y, load, vector_ok, stream);
    case 64: return launch_lookup<64, true>(p, codes, rows, w, y, load, vector_ok, stream);
    case 32: return launch_lookup<32, true>(p, codes, rows, w, y, load, vector_ok, stream);
    default: return launch_lookup<16, true>(p, codes, rows, w, y, load, vector_ok, stream);
  }
}

cudaError_t lookup_nchw(const DeviceInfo& dev, const uint8_t* codes, int64_t B, int64_t P, const LutWeights& w,
                        float* y, cudaStream_t stream) {
  const int64_t rows = B * P;
  if (rows == 0 || w.M == 0) return cudaSuccess;
  const LookupPlan p = plan_lookup_nchw(rows, w.C, w.M, dev);
  const int load = code_load(w.C, codes);
  const dim3 grid(p.grid_x, p.grid_y);
  if (p.lut_in_shared) {
    if (cudaError_t err = allow_smem(lookup_nchw_kernel<true>, p.smem_bytes)) return err;
    lookup_nchw_kernel<true><<<grid, p.threads, p.smem_bytes, stream>>>(codes, rows, P, w, y, load, 1u);
  } else {
    lookup_nchw_kernel<false><<<grid, p.threads, 0, stream>>>(codes, rows, P, w, y, load, 1u);
  }
  return cudaGetLastError();
}

}  // namespace halut::cuda
