// AVX-512 column-major tree encoding (conv_kernels.h): 16 positions per vector; a tree's 15 thresholds fit one
// register and vpermps picks each position's threshold by its node index, so a level is a load, a permute and a
// compare.
#include <immintrin.h>

#include "conv_kernels.h"

namespace halut::cpu {

void encode_tree_cols_avx512(const float* cols, int64_t ld, int64_t rows, const TreeParams& p, uint8_t* codes) {
  constexpr int64_t kChunk = 64;  // codebooks per tile
  alignas(64) uint8_t tile[kChunk][16];
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int64_t nr = rows - r0 < 16 ? rows - r0 : 16;
    const __mmask16 valid = static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
    for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
      const int64_t nc = p.C - c0 < kChunk ? p.C - c0 : kChunk;
      for (int64_t j = 0; j < nc; ++j) {
        const int32_t* dims = p.split_dims + (c0 + j) * kTreeDepth;
        const __m512 thresholds = _mm512_loadu_ps(p.thresholds + (c0 + j) * 16);
        __m512i node = _mm512_setzero_si512();
        for (int level = 0; level < kTreeDepth; ++level) {
          const __m512 x = _mm512_maskz_loadu_ps(valid, cols + dims[level] * ld + r0);
          const __m512i at = _mm512_add_epi32(node, _mm512_set1_epi32((1 << level) - 1));
          const __m512 t = _mm512_permutexvar_ps(at, thresholds);
          const __mmask16 right = _mm512_cmp_ps_mask(x, t, _CMP_GT_OQ);  // NaN goes left
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

}  // namespace halut::cpu
