// AVX-512 column-major encoding (conv_kernels.h), 16 positions per vector. Tree: a tree's 15 thresholds fit one
// register and vpermps picks each position's threshold by its node index, so a level is a load, a permute and a
// compare. PQ: one register per prototype holds the 16 positions' scores, so an element is one load of its 16
// positions and a multiply and an add per prototype against a broadcast weight; the gather before it is the
// element-major copy of gather_cols (runs of input rows) instead of a scalar load per element and position.
#include <immintrin.h>

#include "conv_kernels.h"
#include "lookup_avx512.h"

namespace halut::cpu {
namespace {

// The loops both encoders share: 16 positions per vector, codebooks in tiles of 64 whose codes leave position by
// position. encode(c, r0, valid) gives codebook c's codes of positions r0 .. r0 + 15 as int32 lanes (lanes outside
// `valid` are never written out).
template <typename Encode>
void encode_tiles(int64_t rows, int64_t C, uint8_t* codes, Encode&& encode) {
  constexpr int64_t kChunk = 64;  // codebooks per tile
  alignas(64) uint8_t tile[kChunk][16];
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int64_t nr = rows - r0 < 16 ? rows - r0 : 16;
    const __mmask16 valid = static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
    for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
      const int64_t nc = C - c0 < kChunk ? C - c0 : kChunk;
      for (int64_t j = 0; j < nc; ++j) {
        _mm_store_si128(reinterpret_cast<__m128i*>(tile[j]), _mm512_cvtepi32_epi8(encode(c0 + j, r0, valid)));
      }
      for (int64_t r = 0; r < nr; ++r) {
        uint8_t* out = codes + (r0 + r) * C + c0;
        for (int64_t j = 0; j < nc; ++j) out[j] = tile[j][r];
      }
    }
  }
}

}  // namespace

void encode_tree_cols_avx512(const float* cols, int64_t ld, int64_t rows, const TreeParams& p, uint8_t* codes) {
  const __m512i one = _mm512_set1_epi32(1);
  encode_tiles(rows, p.C, codes, [&](int64_t c, int64_t r0, __mmask16 valid) {
    const int32_t* dims = p.split_dims + c * kTreeDepth;
    const __m512 thresholds = _mm512_loadu_ps(p.thresholds + c * 16);
    __m512i node = _mm512_setzero_si512();
    for (int level = 0; level < kTreeDepth; ++level) {
      const __m512 x = _mm512_maskz_loadu_ps(valid, cols + dims[level] * ld + r0);
      const __m512i at = _mm512_add_epi32(node, _mm512_set1_epi32((1 << level) - 1));
      const __m512 t = _mm512_permutexvar_ps(at, thresholds);
      const __mmask16 right = _mm512_cmp_ps_mask(x, t, _CMP_GT_OQ);  // NaN goes left
      node = _mm512_add_epi32(node, node);
      node = _mm512_mask_add_epi32(node, right, node, one);
    }
    return node;
  });
}

// The AVX-512 row lookup (avx512.cc: vpermb picks 64 entries per instruction, vpdpbusd sums 4 codebooks) with its
// output written channel-major: its accumulators already hold 16 consecutive positions of one output channel, so
// they go straight to Y[m * ldy + position] (NCHW) instead of through the row kernel's transpose and a transpose
// back.
void lookup_nchw_avx512(const uint8_t* codes, int64_t rows, const LutParams& p, float* Y, int64_t ldy,
                        void* scratch) {
  const int64_t G = p.Cpad / 4;
  const int64_t table_stride = p.Cpad * kCodes;
  uint32_t* index = static_cast<uint32_t*>(scratch);
  avx512_lookup::build_index(codes, rows, p.C, G, index);
  for (int64_t m0 = 0; m0 < p.M; m0 += 4) {
    const int64_t nm = p.M - m0 < 4 ? p.M - m0 : 4;
    for (int64_t q = 0; q < rows; q += 64) {
      __m512i acc[4][4];
      // rows m0 .. m0+3 of the tables exist: the LUT is padded to Mpad
      avx512_lookup::sums_4x64(acc, p.lut + m0 * table_stride, table_stride, index + (q / 64) * G * 64, G);
      for (int j = 0; j < nm; ++j) {
        const __m512 scale = _mm512_set1_ps(p.scale[m0 + j]);
        const __m512 offset = _mm512_set1_ps(p.offset[m0 + j]);
        float* out = Y + (m0 + j) * ldy + q;
        for (int b = 0; b < 4 && q + 16 * b < rows; ++b) {
          const int64_t left = rows - q - 16 * b;
          const __mmask16 valid = static_cast<__mmask16>(left >= 16 ? 0xFFFF : (1u << left) - 1);
          const __m512 scaled = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(acc[j][b]));
          _mm512_mask_storeu_ps(out + 16 * b, valid, _mm512_add_ps(scaled, offset));
        }
      }
    }
  }
}

void encode_pq_cols_avx512(const float* cols, int64_t ld, int64_t rows, const PqParams& p, uint8_t* codes) {
  encode_tiles(rows, p.C, codes, [&](int64_t c, int64_t r0, __mmask16 valid) {
    __m512 score[kCodes];
#pragma GCC unroll 16
    for (int k = 0; k < kCodes; ++k) score[k] = _mm512_set1_ps(p.biases[c * kCodes + k]);
    for (int64_t d = p.bounds[c]; d < p.bounds[c + 1]; ++d) {
      const __m512 x = _mm512_maskz_loadu_ps(valid, cols + d * ld + r0);
      const float* v = p.vectors_t + d * kCodes;
      // The product rounded before the add, in the spec's order over d (the file is built without contraction).
#pragma GCC unroll 16
      for (int k = 0; k < kCodes; ++k) score[k] = _mm512_add_ps(score[k], _mm512_mul_ps(x, _mm512_set1_ps(v[k])));
    }
    // The scan of docs/ops.md per lane: the first strictly smaller score wins (ordered compare: NaN never wins).
    __m512 best_score = score[0];
    __m512i best = _mm512_setzero_si512();
#pragma GCC unroll 15
    for (int k = 1; k < kCodes; ++k) {
      const __mmask16 better = _mm512_cmp_ps_mask(score[k], best_score, _CMP_LT_OQ);
      best_score = _mm512_mask_mov_ps(best_score, better, score[k]);
      best = _mm512_mask_mov_epi32(best, better, _mm512_set1_epi32(k));
    }
    return best;
  });
}

}  // namespace halut::cpu
