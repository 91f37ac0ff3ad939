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

// One thread per (row, codebook), codebook-major: a warp shares the codebook's prototypes (broadcast loads) while
// each thread walks its own row slice. The 32 rows of a warp are 32 different lines of X, so each load of X costs
// one L1 wavefront per thread: with `slices_of_4` (X 16-byte aligned, D and every slice bound a multiple of 4) the
// slice is read 4 floats per load, a quarter of the wavefronts.
__global__ void encode_pq_kernel(const float* __restrict__ x, int64_t rows, PqWeights w,
                                 uint8_t* __restrict__ codes) {
  const int64_t total = rows * w.C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t c = int32_t(i / rows);
    const int64_t n = i - int64_t(c) * rows;
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
// A thread owns 4 consecutive output columns: one 32-bit LUT word per (codebook, code) holds their 4 entries (the
// code-major layout puts m contiguous), so one load serves 4 lookups. The device copy of the LUT is biased to
// unsigned (entry + 128, i.e. the int8 bits ^ 0x80), so the 4 entries are summed two per 32-bit add in 16-bit lanes
// (columns 0 and 2, 1 and 3: one byte_perm each to spread them) instead of 4 sign extensions and 4 adds; a lane
// holds at most 256 * 255 < 2^16, so the lanes are emptied into int32 every 256 codebooks, and 128 C is subtracted
// at the end: the sum stays exact.
constexpr int32_t kLaneChunk = 256;


// Calls f(c, code & 15) for c = c0 .. c1-1, reading the row's codes 4 per load when `words` (C % 4 == 0 and the
// codes 4-byte aligned, so every row and every chunk start is aligned).
template <typename F>
__device__ __forceinline__ void for_each_code(const uint8_t* __restrict__ row, int32_t c0, int32_t c1, bool words,
                                              F&& f) {
  int32_t c = c0;
  if (words) {
    const uint32_t* q = reinterpret_cast<const uint32_t*>(row);
    for (; c + 4 <= c1; c += 4) {
      const uint32_t four = __ldg(q + c / 4);
      f(c, four & 15u);
      f(c + 1, (four >> 8) & 15u);
      f(c + 2, (four >> 16) & 15u);
      f(c + 3, (four >> 24) & 15u);
    }
  }
  for (; c < c1; ++c) f(c, uint32_t(__ldg(row + c)) & 15u);
}

// S for the thread's 4 columns of one row: fetch(c, code) returns the biased LUT word of codebook c.
template <typename Fetch>
__device__ __forceinline__ void row_sums(const uint8_t* __restrict__ row, int32_t C, bool words, Fetch&& fetch,
                                         int (&acc)[4]) {
  acc[0] = acc[1] = acc[2] = acc[3] = 0;
  for (int32_t c0 = 0; c0 < C; c0 += kLaneChunk) {
    uint32_t even = 0, odd = 0;  // 16-bit lanes: columns (0, 2) and (1, 3)
    for_each_code(row, c0, min(C, c0 + kLaneChunk), words, [&](int32_t c, uint32_t code) {
      const uint32_t word = fetch(c, code);
      even += __byte_perm(word, 0u, 0x4240);  // bytes 0 and 2, zero-extended into the two halves
      odd += __byte_perm(word, 0u, 0x4341);   // bytes 1 and 3
    });
    acc[0] += int(even & 0xffffu);
    acc[1] += int(odd & 0xffffu);
    acc[2] += int(even >> 16);
    acc[3] += int(odd >> 16);
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) acc[j] -= 128 * C;
}

// y = fl32(fl32(scale * float(S)) + offset); float(S) is exact (|S| <= 128 C < 2^24).
__device__ __forceinline__ float finish(float scale, float sum, float offset) {
  return __fadd_rn(__fmul_rn(scale, sum), offset);
}

// Row-major Y[rows][M] (plan_lookup): a block owns kTile consecutive columns and a thread 16 of them, kTile / 16
// threads (lanes) per row and blockDim / that many rows per pass. Lane l owns the four 4-column words at columns
// 4 l + 4 (kTile / 4) k, k = 0..3, not 16 contiguous columns: then the 4-byte-per-column outputs of a row's lanes
// (and their scale and offset) are contiguous for each k, so every store and load of the epilogue is coalesced.
// The shared tile [C * 16][kTile] is laid out to match: line (codebook, code) holds, at lane l's 16 bytes, the
// entries of l's four words, so one conflict-free 16-byte load per codebook fetches all 16 (at kTile = 128 a
// quarter warp is one row reading one 128-byte line). Past half the opt-in shared memory the LUT is read from
// global memory (kTile = 128, four 4-byte loads per codebook). Shared-memory bandwidth (one byte per entry, 16
// cycles of an SM sub-partition per codebook) is the floor, so the integer work per entry is kept below it: per
// 4-column word the thread keeps the wrapping 32-bit sum of the words (`all`) and the sum of bytes 1 and 3 in
// 16-bit lanes (`odd`, one byte_perm per word). With every lane below 2^16 (emptied every 256 codebooks),
// all - (odd << 8) is exactly the sum of bytes 0 and 2 in 16-bit lanes: two integer operations per 4 entries where
// spreading both halves takes four; the adds are split between the integer and the FMA pipe (add_pair).
struct Lanes {
  uint32_t all[4] = {0u, 0u, 0u, 0u}, odd[4] = {0u, 0u, 0u, 0u};
};

__device__ __forceinline__ void add_entries(Lanes& l, const uint4 e) {
  l.all[0] += e.x;
  l.odd[0] += __byte_perm(e.x, 0u, 0x4341);
  l.all[1] += e.y;
  l.odd[1] += __byte_perm(e.y, 0u, 0x4341);
  l.all[2] += e.z;
  l.odd[2] += __byte_perm(e.z, 0u, 0x4341);
  l.all[3] += e.w;
  l.odd[3] += __byte_perm(e.w, 0u, 0x4341);
}

// A row's sums leave the lanes as floats without a conversion instruction (the int-to-float conversion and the
// extraction of a 16-bit lane were integer-pipe work, 32 per row): the float whose bits are kMagicBits + s is
// exactly 1.5 * 2^23 + s for 0 <= s < 2^22, so the lane sums are put into the low bits of kMagicBits and
// fl32(that - (1.5 * 2^23 + 128 C)) is exactly S, both operands being integers below 2^24. That holds while
// 255 C < 2^22 (C <= kMagicMaxC); larger C (the LUT then comes from global memory) converts as before.
constexpr uint32_t kMagicBits = 0x4B400000u;  // 1.5 * 2^23; its low 16 bits are 0
constexpr int32_t kMagicMaxC = 16448;

// acc = kMagicBits + the four words' 16 lane sums (columns 4k .. 4k+3 at acc[4k ..]): the first chunk of
// codebooks puts them in with one byte_perm each (lane bytes below, the magic's two high bytes above) ...
__device__ __forceinline__ void start_sums(const Lanes& l, uint32_t (&acc)[16]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t even = l.all[k] - (l.odd[k] << 8);
    acc[4 * k] = __byte_perm(even, kMagicBits, 0x7610);
    acc[4 * k + 1] = __byte_perm(l.odd[k], kMagicBits, 0x7610);
    acc[4 * k + 2] = __byte_perm(even, kMagicBits, 0x7632);
    acc[4 * k + 3] = __byte_perm(l.odd[k], kMagicBits, 0x7632);
  }
}

// ... and every further chunk of 256 (C > 256) is added.
__device__ __forceinline__ void add_sums(const Lanes& l, uint32_t (&acc)[16]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t even = l.all[k] - (l.odd[k] << 8);
    acc[4 * k] += even & 0xffffu;
    acc[4 * k + 1] += l.odd[k] & 0xffffu;
    acc[4 * k + 2] += even >> 16;
    acc[4 * k + 3] += l.odd[k] >> 16;
  }
}

// float(S) for the accumulator of start_sums / add_sums; `shift` = fl32(1.5 * 2^23 + 128 C). A shared-memory LUT
// tile (kShared) holds C * 16 * 16 bytes in half the opt-in shared memory (C <= 454 on an H100; kMagicMaxC would
// take a 4 MB tile), so only the global-memory kernel needs the conversion instruction, for large C.
template <bool kShared>
__device__ __forceinline__ float sum_value(uint32_t acc, int32_t C, float shift) {
  if (kShared || C <= kMagicMaxC) return __fsub_rn(__uint_as_float(acc), shift);
  return float(int32_t(acc - kMagicBits) - 128 * C);  // the wrapping sum: exact while 255 C < 2^31
}

// Code j (0..3) of a word holding 4 consecutive codes, masked to 4 bits.
__device__ __forceinline__ uint32_t code_of(uint32_t four, int j) { return (four >> (8 * j)) & 15u; }

// Two codebooks at once. The integer pipe (IADD3, PRMT, LOP3, SHF: half rate) bounded the loop while the FMA pipe,
// which adds integers too (IMAD, half rate), sat nearly idle: `one` is 1, passed as a kernel argument so that the
// compiler cannot fold it, and `x * one + sum` stays an IMAD. The raw-word sums stay 3-input adds (IADD3) and the
// byte_perm sums go to the FMA pipe (benchmarks/sass_mix.py counts the split).
__device__ __forceinline__ void add_pair(Lanes& l, const uint4 a, const uint4 b, uint32_t one) {
  l.all[0] += a.x + b.x;
  l.all[1] += a.y + b.y;
  l.all[2] += a.z + b.z;
  l.all[3] += a.w + b.w;
  l.odd[0] = __byte_perm(b.x, 0u, 0x4341) * one + (__byte_perm(a.x, 0u, 0x4341) * one + l.odd[0]);
  l.odd[1] = __byte_perm(b.y, 0u, 0x4341) * one + (__byte_perm(a.y, 0u, 0x4341) * one + l.odd[1]);
  l.odd[2] = __byte_perm(b.z, 0u, 0x4341) * one + (__byte_perm(a.z, 0u, 0x4341) * one + l.odd[2]);
  l.odd[3] = __byte_perm(b.w, 0u, 0x4341) * one + (__byte_perm(a.w, 0u, 0x4341) * one + l.odd[3]);
}

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
__device__ __forceinline__ void sum_16_shared(const char* tile, uint32_t base, const uint4 q, Lanes& l,
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

// Three blocks per SM: what the 64 KB tile of C = 32 allows, and a register cap (85) that the kernel fits unspilled.
// `one` must be 1 (see add_pair).
template <int kTile, bool kShared>
__global__ void __launch_bounds__(kThreads, 3) lookup_kernel(const uint8_t* __restrict__ codes, int64_t rows,
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
  const float shift = float(12582912 + 128 * min(w.C, kMagicMaxC));  // 1.5 * 2^23 + 128 C, exact
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
      Lanes lanes;
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

// NCHW Y[B][M][P] (plan_lookup_nchw): warp g of the block owns columns m0 + 4 g .. + 3 and its 32 lanes 32
// consecutive positions. The shared tile is group-major ([G][C * 16] words): lanes with different codes read
// different banks (code = word index mod 16) and equal codes broadcast.
template <bool kShared>
__global__ void lookup_nchw_kernel(const uint8_t* __restrict__ codes, int64_t rows, int64_t P, LutWeights w,
                                   float* __restrict__ y, bool code_words) {
  extern __shared__ __align__(16) uint32_t shared_lut[];
  const int groups = blockDim.x / 32;
  const int g = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t m0 = blockIdx.x * 4 * groups;
  const int32_t m = m0 + 4 * g;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(w.lut);
  const int32_t table = w.C * kCodes;

  const uint32_t* lut_words;
  int64_t stride;
  if constexpr (kShared) {
    // Read in (codebook-code, group) order: consecutive threads load consecutive words of global memory.
    for (int32_t i = threadIdx.x; i < table * groups; i += blockDim.x) {
      const int32_t ck = i / groups, gi = i - ck * groups;
      const int32_t col = m0 + 4 * gi;
      shared_lut[gi * table + ck] = col < w.m_pad ? __ldg(src + (int64_t(ck) * w.m_pad + col) / 4) : 0u;
    }
    __syncthreads();
    lut_words = shared_lut + g * table;
    stride = 1;
  } else {
    lut_words = src + m / 4;
    stride = w.m_pad / 4;
  }
  if (m >= w.M) return;

  float s[4], o[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    s[j] = m + j < w.M ? __ldg(w.scale + m + j) : 0.f;
    o[j] = m + j < w.M ? __ldg(w.offset + m + j) : 0.f;
  }
  for (int64_t n = int64_t(blockIdx.y) * 32 + lane; n < rows; n += int64_t(gridDim.y) * 32) {
    int acc[4];
    row_sums(codes + n * w.C, w.C, code_words, [&](int32_t c, uint32_t code) -> uint32_t {
      const int64_t word = (int64_t(c) * kCodes + code) * stride;
      if constexpr (kShared) {
        return lut_words[word];
      } else {
        return __ldg(lut_words + word);
      }
    }, acc);
    const int64_t b = n / P, p = n - b * P;
    float* dst = y + (b * w.M + m) * P + p;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (m + j < w.M) dst[j * P] = finish(s[j], float(acc[j]), o[j]);
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
  encode_pq_kernel<<<grid_1d(rows * w.C, dev), kThreads, 0, stream>>>(x, rows, v, codes);
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
  const bool code_words = w.C % 4 == 0 && aligned(codes, 4);
  const dim3 grid(p.grid_x, p.grid_y);
  if (p.lut_in_shared) {
    if (cudaError_t err = allow_smem(lookup_nchw_kernel<true>, p.smem_bytes)) return err;
    lookup_nchw_kernel<true><<<grid, p.threads, p.smem_bytes, stream>>>(codes, rows, P, w, y, code_words);
  } else {
    lookup_nchw_kernel<false><<<grid, p.threads, 0, stream>>>(codes, rows, P, w, y, code_words);
  }
  return cudaGetLastError();
}

}  // namespace halut::cuda
