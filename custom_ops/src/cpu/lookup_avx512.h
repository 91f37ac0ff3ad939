// The core of the AVX-512 lookup, shared by the row-major (avx512.cc) and the NCHW (conv_avx512.cc) kernels.
// Include only from translation units compiled with the AVX-512 flags.
//
// vpermb indexes a 64-byte table, so one register holds the 16-entry LUTs of 4 codebooks of one output; a 64-byte
// index vector holds 16 rows x 4 codebooks (byte 4r + j = code + 16j), and vpdpbusd with a vector of ones sums the
// 4 looked-up int8 entries of each row into that row's int32 lane: two instructions per 64 lookups, exact.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace halut::cpu::avx512_lookup {

// Codes [rows, C] -> index words [span / 64][G][64 rows] (span = rows rounded up to 64): byte j of a row's word is
// code(4g + j) & 15 plus 16 j (its codebook's table). A 64-row group reads its groups g in order: one sequential
// stream. Rows past `rows` index code 0; their sums are computed and never stored.
inline void build_index(const uint8_t* codes, int64_t rows, int64_t C, int64_t G, uint32_t* index) {
  const int64_t span = (rows + 63) / 64 * 64;
  for (int64_t r = 0; r < span; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      uint32_t word = 0;
      if (r < rows) {
        const uint8_t* src = codes + r * C;
        if (4 * g + 4 <= C) {
          std::memcpy(&word, src + 4 * g, 4);
        } else {
          for (int64_t j = 0; 4 * g + j < C; ++j) word |= static_cast<uint32_t>(src[4 * g + j]) << (8 * j);
        }
      }
      index[((r / 64) * G + g) * 64 + r % 64] = (word & 0x0F0F0F0Fu) | 0x30201000u;
    }
  }
}

// acc[j][b] = the integer sums of output j (tables at table + j * table_stride) for rows 16b .. 16b+15 of one
// 64-row group (its index words at group_index): 16 accumulators, each table load serves 4 lookups.
__attribute__((always_inline)) inline void sums_4x64(__m512i (&acc)[4][4], const int8_t* table,
                                                     int64_t table_stride, const uint32_t* group_index, int64_t G) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int j = 0; j < 4; ++j)
    for (int b = 0; b < 4; ++b) acc[j][b] = _mm512_setzero_si512();
  for (int64_t g = 0; g < G; ++g) {
    const __m512i* idx = reinterpret_cast<const __m512i*>(group_index + g * 64);
    const __m512i i0 = _mm512_load_si512(idx), i1 = _mm512_load_si512(idx + 1);
    const __m512i i2 = _mm512_load_si512(idx + 2), i3 = _mm512_load_si512(idx + 3);
    for (int j = 0; j < 4; ++j) {
      const __m512i t = _mm512_loadu_si512(table + j * table_stride + g * 64);
      acc[j][0] = _mm512_dpbusd_epi32(acc[j][0], ones, _mm512_permutexvar_epi8(i0, t));
      acc[j][1] = _mm512_dpbusd_epi32(acc[j][1], ones, _mm512_permutexvar_epi8(i1, t));
      acc[j][2] = _mm512_dpbusd_epi32(acc[j][2], ones, _mm512_permutexvar_epi8(i2, t));
      acc[j][3] = _mm512_dpbusd_epi32(acc[j][3], ones, _mm512_permutexvar_epi8(i3, t));
    }
  }
}

}  // namespace halut::cpu::avx512_lookup
