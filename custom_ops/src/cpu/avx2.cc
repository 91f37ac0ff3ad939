// AVX2 kernels: compiled with -mavx2 only in this translation unit (no FMA: every mul and add rounds on its own).
//
// Lookup: vpshufb looks up a 16-entry table per 128-bit lane, so one register holds the LUTs of two codebooks of
// one output (lane 0: codebook 2q, lane 1: 2q + 1) and the index register holds 16 rows of each. Two such lookups
// (codebook pairs q, q + 1) are interleaved byte-wise with vpunpck{l,h}bw so that vpmaddubsw with ones adds the
// entries of two codebooks of the same row into an exact int16; int16 accumulation is exact for up to 256
// codebooks, so the codebooks run in chunks of 256 widened into int32 after each chunk.
#include <immintrin.h>

#include "kernels.h"

namespace halut::cpu {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------------------------
// HalutEncodeTree: 8 rows per vector; the 15 thresholds sit in two registers and vpermps + a blend picks each row's.
void encode_tree(const float* X, int64_t rows, int64_t D, const TreeParams& p, uint8_t* codes) {
  if (D > (INT32_MAX / 8)) {
    scalar_kernels().encode_tree(X, rows, D, p, codes);
    return;
  }
  const __m256i row_offset =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(static_cast<int>(D)));
  const __m256i seven = _mm256_set1_epi32(7);
  constexpr int64_t kChunk = 64;
  alignas(32) int32_t tile[kChunk][8];
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int64_t nr = min64(8, rows - r0);
    const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nr)),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const float* base = X + r0 * D;
    for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
      const int64_t nc = min64(kChunk, p.C - c0);
      for (int64_t j = 0; j < nc; ++j) {
        const int32_t* dims = p.split_dims + (c0 + j) * kTreeDepth;
        const __m256 lo = _mm256_loadu_ps(p.thresholds + (c0 + j) * 16);
        const __m256 hi = _mm256_loadu_ps(p.thresholds + (c0 + j) * 16 + 8);
        __m256i node = _mm256_setzero_si256();
        for (int level = 0; level < kTreeDepth; ++level) {
          const __m256i offsets = _mm256_add_epi32(row_offset, _mm256_set1_epi32(dims[level]));
          const __m256 x =
              _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, offsets, _mm256_castsi256_ps(valid), 4);
          const __m256i at = _mm256_add_epi32(node, _mm256_set1_epi32((1 << level) - 1));
          const __m256 t = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, at), _mm256_permutevar8x32_ps(hi, at),
                                            _mm256_castsi256_ps(_mm256_cmpgt_epi32(at, seven)));
          const __m256i right = _mm256_castps_si256(_mm256_cmp_ps(x, t, _CMP_GT_OQ));  // NaN goes left
          node = _mm256_add_epi32(node, node);
          node = _mm256_sub_epi32(node, right);  // right is -1 where x > t
        }
        _mm256_store_si256(reinterpret_cast<__m256i*>(tile[j]), node);
      }
      for (int64_t r = 0; r < nr; ++r) {
        uint8_t* out = codes + (r0 + r) * p.C + c0;
        for (int64_t j = 0; j < nc; ++j) out[j] = static_cast<uint8_t>(tile[j][r]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// HalutEncodePQ: the 16 prototypes in two registers per row; R rows share each column load.
// The scan of docs/ops.md (first index of the smallest score; a NaN never wins; NaN at 0 keeps 0), branch-free:
// a scalar scan over random scores mispredicts on most codebooks.
inline int argmin16(__m256 lo, __m256 hi) {
  const __m256 ordered_lo = _mm256_cmp_ps(lo, lo, _CMP_ORD_Q), ordered_hi = _mm256_cmp_ps(hi, hi, _CMP_ORD_Q);
  if (!(_mm256_movemask_ps(ordered_lo) & 1)) return 0;
  const __m256 inf = _mm256_set1_ps(__builtin_inff());
  __m256 m = _mm256_min_ps(_mm256_blendv_ps(inf, lo, ordered_lo), _mm256_blendv_ps(inf, hi, ordered_hi));
  m = _mm256_min_ps(m, _mm256_permute2f128_ps(m, m, 0x01));
  m = _mm256_min_ps(m, _mm256_shuffle_ps(m, m, 0x4E));
  m = _mm256_min_ps(m, _mm256_shuffle_ps(m, m, 0xB1));  // every lane holds the smallest ordered score
  const int at = _mm256_movemask_ps(_mm256_cmp_ps(lo, m, _CMP_EQ_OQ)) |
                 (_mm256_movemask_ps(_mm256_cmp_ps(hi, m, _CMP_EQ_OQ)) << 8);
  return __builtin_ctz(static_cast<unsigned>(at));
}

template <int R>
void pq_rows(const float* X, const PqParams& p, uint8_t* codes) {
  for (int64_t c = 0; c < p.C; ++c) {
    __m256 lo[R], hi[R];
    const __m256 bias_lo = _mm256_loadu_ps(p.biases + c * kCodes);
    const __m256 bias_hi = _mm256_loadu_ps(p.biases + c * kCodes + 8);
    for (int r = 0; r < R; ++r) {
      lo[r] = bias_lo;
      hi[r] = bias_hi;
    }
    for (int64_t d = p.bounds[c]; d < p.bounds[c + 1]; ++d) {
      const __m256 v_lo = _mm256_loadu_ps(p.vectors_t + d * kCodes);
      const __m256 v_hi = _mm256_loadu_ps(p.vectors_t + d * kCodes + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 x = _mm256_broadcast_ss(X + r * p.D + d);
        lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(x, v_lo));
        hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(x, v_hi));
      }
    }
    for (int r = 0; r < R; ++r) codes[r * p.C + c] = static_cast<uint8_t>(argmin16(lo[r], hi[r]));
  }
}

void encode_pq(const float* X, int64_t rows, const PqParams& p, uint8_t* codes) {
  constexpr int R = 4;
  int64_t r = 0;
  for (; r + R <= rows; r += R) pq_rows<R>(X + r * p.D, p, codes + r * p.C);
  for (; r < rows; ++r) pq_rows<1>(X + r * p.D, p, codes + r * p.C);
}

// ---------------------------------------------------------------------------------------------------------------
// HalutLookup.

inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
    r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
  }
}

constexpr int64_t kGroupsPerChunk = 64;  // 256 codebooks: |sum| <= 128 * 256 fits int16

void lookup(const uint8_t* codes, int64_t rows, const LutParams& p, float* Y, void* scratch) {
  const int64_t G = p.Cpad / 4;
  const int64_t table_stride = p.Cpad * kCodes;
  const int64_t blocks = (rows + 15) / 16;
  const int64_t span_blocks = (blocks + 1) / 2 * 2;  // whole pairs of 16-row blocks
  // Index bytes, [span_blocks / 2][Cpad / 2 pairs][2 blocks][2 lanes][16 rows]: a pass over 32 rows reads its
  // codebook pairs in order, one sequential stream.
  uint8_t* index = static_cast<uint8_t*>(scratch);
  for (int64_t r = 0; r < span_blocks * 16; ++r) {
    const int64_t block = r / 16, lane_row = r % 16;
    for (int64_t c = 0; c < p.Cpad; ++c) {
      const uint8_t code = (r < rows && c < p.C) ? (codes[r * p.C + c] & 15) : 0;
      index[((block / 2) * (p.Cpad / 2) + c / 2) * 64 + (block & 1) * 32 + (c & 1) * 16 + lane_row] = code;
    }
  }
  const __m256i ones = _mm256_set1_epi8(1);
  alignas(32) int32_t sums[8][32];  // 8 outputs x 32 rows
  // 8 outputs at a time (their tables stay in L1/L2) across all rows of the call, 32 rows per pass.
  for (int64_t m0 = 0; m0 < p.Mpad; m0 += 8) {
    const int64_t nm = min64(8, p.M - m0);
    if (nm <= 0) break;
    const __m256i columns =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nm)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t b0 = 0; b0 < blocks; b0 += 2) {
      for (int64_t mb = 0; mb < 8; mb += 2) {
        const int8_t* table = p.lut + (m0 + mb) * table_stride;
        __m256i total[2][2][2];  // [output][block][rows 0..7, 8..15] int32
        for (int j = 0; j < 2; ++j)
          for (int b = 0; b < 2; ++b) total[j][b][0] = total[j][b][1] = _mm256_setzero_si256();
        for (int64_t g0 = 0; g0 < G; g0 += kGroupsPerChunk) {
          const int64_t g1 = min64(G, g0 + kGroupsPerChunk);
          __m256i lo[2][2], hi[2][2];  // [output][block]: rows 0..7 and 8..15, both lanes still apart
          for (int j = 0; j < 2; ++j)
            for (int b = 0; b < 2; ++b) lo[j][b] = hi[j][b] = _mm256_setzero_si256();
          for (int64_t g = g0; g < g1; ++g) {
            const uint8_t* pass = index + (b0 / 2) * (p.Cpad / 2) * 64;
            const __m256i* i_even = reinterpret_cast<const __m256i*>(pass + (2 * g) * 64);
            const __m256i* i_odd = reinterpret_cast<const __m256i*>(pass + (2 * g + 1) * 64);
            for (int j = 0; j < 2; ++j) {
              const int8_t* t = table + j * table_stride + g * 64;
              const __m256i t_even = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t));
              const __m256i t_odd = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 32));
              for (int b = 0; b < 2; ++b) {
                const __m256i s1 = _mm256_shuffle_epi8(t_even, _mm256_load_si256(i_even + b));
                const __m256i s2 = _mm256_shuffle_epi8(t_odd, _mm256_load_si256(i_odd + b));
                lo[j][b] = _mm256_add_epi16(lo[j][b], _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(s1, s2)));
                hi[j][b] = _mm256_add_epi16(hi[j][b], _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(s1, s2)));
              }
            }
          }
          for (int j = 0; j < 2; ++j) {
            for (int b = 0; b < 2; ++b) {
              const __m128i l = _mm_add_epi16(_mm256_castsi256_si128(lo[j][b]), _mm256_extracti128_si256(lo[j][b], 1));
              const __m128i h = _mm_add_epi16(_mm256_castsi256_si128(hi[j][b]), _mm256_extracti128_si256(hi[j][b], 1));
              total[j][b][0] = _mm256_add_epi32(total[j][b][0], _mm256_cvtepi16_epi32(l));
              total[j][b][1] = _mm256_add_epi32(total[j][b][1], _mm256_cvtepi16_epi32(h));
            }
          }
        }
        for (int j = 0; j < 2; ++j)
          for (int b = 0; b < 2; ++b)
            for (int h = 0; h < 2; ++h)
              _mm256_store_si256(reinterpret_cast<__m256i*>(&sums[mb + j][16 * b + 8 * h]), total[j][b][h]);
      }
      const int64_t row0 = 16 * b0;
      for (int64_t r0 = 0; r0 < 32 && row0 + r0 < rows; r0 += 8) {
        __m256 r[8];
        for (int k = 0; k < 8; ++k) {
          const __m256 sum = _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(&sums[k][r0])));
          const __m256 scaled = _mm256_mul_ps(_mm256_set1_ps(p.scale[m0 + k]), sum);
          r[k] = _mm256_add_ps(scaled, _mm256_set1_ps(p.offset[m0 + k]));
        }
        transpose8(r);
        const int64_t nr = min64(8, rows - row0 - r0);
        float* out = Y + (row0 + r0) * p.M + m0;
        if (nm == 8) {  // vmaskmovps stores are microcoded on AMD: only for the last columns
          for (int64_t i = 0; i < nr; ++i) _mm256_storeu_ps(out + i * p.M, r[i]);
        } else {
          for (int64_t i = 0; i < nr; ++i) _mm256_maskstore_ps(out + i * p.M, columns, r[i]);
        }
      }
    }
  }
}

}  // namespace

const IsaKernels& avx2_kernels() {
  static const IsaKernels k{"avx2", false, encode_tree, encode_pq, lookup};
  return k;
}

}  // namespace halut::cpu
