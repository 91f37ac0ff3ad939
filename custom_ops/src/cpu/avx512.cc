// AVX-512 kernels (F, BW, VL, VBMI, VNNI): compiled with those target flags only in this translation unit.
//
// Lookup: vpermb indexes a 64-byte table, so one register holds the 16-entry LUTs of 4 codebooks of one output;
// a 64-byte index vector holds 16 rows x 4 codebooks (byte 4r + j = code + 16j), and vpdpbusd with a vector of
// ones sums the 4 looked-up int8 entries of each row into that row's int32 lane: two instructions per 64 lookups,
// exact. Rows end up in lanes, so a 16x16 transpose turns 16 outputs x 16 rows into row-major stores.
#include <immintrin.h>

#include <cstring>

#include "kernels.h"
#include "lookup_avx512.h"

namespace halut::cpu {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------------------------
// HalutEncodeTree: 16 rows per vector; each level gathers the split column of 16 rows and picks each row's node
// threshold from the codebook's 15 thresholds (one register) with vpermps.
void encode_tree(const float* X, int64_t rows, int64_t D, const TreeParams& p, uint8_t* codes) {
  if (D > (INT32_MAX / 16)) {  // the gather offsets r * D are int32
    scalar_kernels().encode_tree(X, rows, D, p, codes);
    return;
  }
  const __m512i row_offset = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                _mm512_set1_epi32(static_cast<int>(D)));
  const __m512i one = _mm512_set1_epi32(1);
  constexpr int64_t kChunk = 64;  // codebooks whose codes are staged before the transposed write
  alignas(64) uint8_t tile[kChunk][16];
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int64_t nr = min64(16, rows - r0);
    const __mmask16 valid = static_cast<__mmask16>(nr == 16 ? 0xFFFF : (1u << nr) - 1);
    const float* base = X + r0 * D;
    for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
      const int64_t nc = min64(kChunk, p.C - c0);
      for (int64_t j = 0; j < nc; ++j) {
        const int32_t* dims = p.split_dims + (c0 + j) * kTreeDepth;
        const __m512 thresholds = _mm512_loadu_ps(p.thresholds + (c0 + j) * 16);
        __m512i node = _mm512_setzero_si512();
        for (int level = 0; level < kTreeDepth; ++level) {
          const __m512i offsets = _mm512_add_epi32(row_offset, _mm512_set1_epi32(dims[level]));
          const __m512 x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, offsets, base, 4);
          const __m512i at = _mm512_add_epi32(node, _mm512_set1_epi32((1 << level) - 1));
          const __m512 t = _mm512_permutexvar_ps(at, thresholds);
          const __mmask16 right = _mm512_cmp_ps_mask(x, t, _CMP_GT_OQ);  // NaN compares false: goes left
          node = _mm512_add_epi32(node, node);
          node = _mm512_mask_add_epi32(node, right, node, one);
        }
        _mm_store_si128(reinterpret_cast<__m128i*>(tile[j]), _mm512_cvtepi32_epi8(node));
      }
      for (int64_t r = 0; r < nr; ++r) {
        uint8_t* out = codes + (r0 + r) * p.C + c0;
        for (int64_t j = 0; j < nc; ++j) out[j] = tile[j][r];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// HalutEncodePQ: one lane per prototype; R rows share each load of a column of the transposed vectors.

// The scan of docs/ops.md (first index of the smallest score; a NaN never wins; NaN at 0 keeps 0) in mask form.
inline int argmin16(__m512 score) {
  const __mmask16 ordered = _mm512_cmp_ps_mask(score, score, _CMP_ORD_Q);
  if (!(ordered & 1)) return 0;
  const float smallest = _mm512_mask_reduce_min_ps(ordered, score);
  const __mmask16 at = _mm512_mask_cmp_ps_mask(ordered, score, _mm512_set1_ps(smallest), _CMP_EQ_OQ);
  return __builtin_ctz(static_cast<unsigned>(at));
}

template <int R>
void pq_rows(const float* X, const PqParams& p, uint8_t* codes) {
  for (int64_t c = 0; c < p.C; ++c) {
    __m512 acc[R];
    const __m512 bias = _mm512_loadu_ps(p.biases + c * kCodes);
    for (int r = 0; r < R; ++r) acc[r] = bias;
    for (int64_t d = p.bounds[c]; d < p.bounds[c + 1]; ++d) {
      const __m512 v = _mm512_loadu_ps(p.vectors_t + d * kCodes);
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_set1_ps(X[r * p.D + d]), v));
      }
    }
    for (int r = 0; r < R; ++r) codes[r * p.C + c] = static_cast<uint8_t>(argmin16(acc[r]));
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

// In-register transpose of 16 vectors of 16 floats (rows <-> lanes).
inline void transpose16(__m512 r[16]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {
    const __m512d a0 = _mm512_castps_pd(a[4 * q]), a1 = _mm512_castps_pd(a[4 * q + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * q + 2]), a3 = _mm512_castps_pd(a[4 * q + 3]);
    b[4 * q + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int k = 0; k < 4; ++k) {
    const __m512 c02 = _mm512_shuffle_f32x4(b[k], b[4 + k], 0x88);
    const __m512 c13 = _mm512_shuffle_f32x4(b[k], b[4 + k], 0xdd);
    const __m512 d02 = _mm512_shuffle_f32x4(b[8 + k], b[12 + k], 0x88);
    const __m512 d13 = _mm512_shuffle_f32x4(b[8 + k], b[12 + k], 0xdd);
    r[k] = _mm512_shuffle_f32x4(c02, d02, 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(c02, d02, 0xdd);
    r[4 + k] = _mm512_shuffle_f32x4(c13, d13, 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(c13, d13, 0xdd);
  }
}

void lookup(const uint8_t* codes, int64_t rows, const LutParams& p, float* Y, void* scratch) {
  const int64_t G = p.Cpad / 4;  // groups of 4 codebooks
  const int64_t table_stride = p.Cpad * kCodes;
  const int64_t span = (rows + 63) / 64 * 64;  // rows rounded up to whole 64-row groups
  uint32_t* index = static_cast<uint32_t*>(scratch);
  avx512_lookup::build_index(codes, rows, p.C, G, index);
  // Whole-line non-temporal stores when every output row segment is 64-byte aligned: a large Y is not read back
  // before it leaves the cache, so skipping the read-for-ownership saves half the output traffic.
  const bool stream = p.stream_output && (reinterpret_cast<uintptr_t>(Y) % 64 == 0) && (p.M % 16 == 0);
  alignas(64) float tile[16][64];  // 16 outputs x 64 rows
  // 16 outputs at a time (their tables, 16 * Cpad * 16 bytes, stay in L1/L2) across all rows of the call.
  for (int64_t m0 = 0; m0 < p.Mpad; m0 += 16) {
    const int64_t nm = min64(16, p.M - m0);
    const __mmask16 columns = static_cast<__mmask16>(nm >= 16 ? 0xFFFF : (1u << nm) - 1);
    for (int64_t q = 0; q < rows; q += 64) {
      for (int64_t mb = 0; mb < 16; mb += 4) {
        __m512i acc[4][4];
        avx512_lookup::sums_4x64(acc, p.lut + (m0 + mb) * table_stride, table_stride, index + (q / 64) * G * 64, G);
        for (int j = 0; j < 4; ++j) {
          const __m512 scale = _mm512_set1_ps(p.scale[m0 + mb + j]);
          const __m512 offset = _mm512_set1_ps(p.offset[m0 + mb + j]);
          for (int b = 0; b < 4; ++b) {
            const __m512 scaled = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(acc[j][b]));
            _mm512_store_ps(&tile[mb + j][16 * b], _mm512_add_ps(scaled, offset));
          }
        }
      }
      for (int64_t b = 0; b < 4 && q + 16 * b < rows; ++b) {
        __m512 r[16];
        for (int k = 0; k < 16; ++k) r[k] = _mm512_load_ps(&tile[k][16 * b]);
        transpose16(r);
        const int64_t nr = min64(16, rows - q - 16 * b);
        float* out = Y + (q + 16 * b) * p.M + m0;
        if (stream && nm == 16) {
          for (int64_t i = 0; i < nr; ++i) _mm512_stream_ps(out + i * p.M, r[i]);
        } else {
          for (int64_t i = 0; i < nr; ++i) _mm512_mask_storeu_ps(out + i * p.M, columns, r[i]);
        }
      }
    }
  }
  if (stream) _mm_sfence();  // streaming stores are weakly ordered: publish them before the task ends
}

}  // namespace

const IsaKernels& avx512_kernels() {
  static const IsaKernels k{"avx512", false, encode_tree, encode_pq, lookup};
  return k;
}

}  // namespace halut::cpu
