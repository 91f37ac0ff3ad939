// NEON kernels (AArch64, where NEON is the baseline: no run-time check). Every mul and add rounds on its own
// (-ffp-contract=off for the library), so the results equal the scalar kernels' and the numpy reference's bit for
// bit. The tree encoder stays scalar: its 4 dependent loads and compares per tree gain nothing from 4 lanes.
//
// Lookup: tbl (vqtbl1q_s8) looks up one codebook's 16-entry table of one output for 16 rows at once, the MADDNESS
// shuffle. Two codebooks' entries are added into int16 with one widening add (vaddl), exact for up to 256
// codebooks, so the codebooks run in chunks of 256 widened into int32 after each chunk.
#include <arm_neon.h>

#include "kernels.h"

namespace halut::cpu {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------------------------
// HalutEncodePQ: the 16 prototypes' scores of a row in 4 registers; R rows share each column's loads.

// The scan of docs/ops.md: the first index of the smallest score; a NaN never wins; a NaN at 0 keeps 0.
inline int argmin16(const float32x4_t s[4]) {
  if (vgetq_lane_f32(s[0], 0) != vgetq_lane_f32(s[0], 0)) return 0;
  // fminnm takes the number when one operand is a NaN, so m is the smallest ordered score.
  const float m = vminnmvq_f32(vminnmq_f32(vminnmq_f32(s[0], s[1]), vminnmq_f32(s[2], s[3])));
  const float32x4_t mv = vdupq_n_f32(m);
  const uint16x8_t lo = vcombine_u16(vmovn_u32(vceqq_f32(s[0], mv)), vmovn_u32(vceqq_f32(s[1], mv)));
  const uint16x8_t hi = vcombine_u16(vmovn_u32(vceqq_f32(s[2], mv)), vmovn_u32(vceqq_f32(s[3], mv)));
  const uint8x16_t eq = vcombine_u8(vmovn_u16(lo), vmovn_u16(hi));
  // 4 bits per score (shift-right-narrow of each byte pair), the first match is the lowest set nibble
  const uint64_t bits = vget_lane_u64(vreinterpret_u64_u8(vshrn_n_u16(vreinterpretq_u16_u8(eq), 4)), 0);
  return __builtin_ctzll(bits) >> 2;
}

template <int R>
void pq_rows(const float* X, const PqParams& p, uint8_t* codes) {
  for (int64_t c = 0; c < p.C; ++c) {
    float32x4_t score[R][4];
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < 4; ++q) score[r][q] = vld1q_f32(p.biases + c * kCodes + 4 * q);
    for (int64_t d = p.bounds[c]; d < p.bounds[c + 1]; ++d) {
      float32x4_t v[4];
      for (int q = 0; q < 4; ++q) v[q] = vld1q_f32(p.vectors_t + d * kCodes + 4 * q);
      for (int r = 0; r < R; ++r) {
        const float32x4_t x = vdupq_n_f32(X[r * p.D + d]);
        for (int q = 0; q < 4; ++q) score[r][q] = vaddq_f32(score[r][q], vmulq_f32(x, v[q]));
      }
    }
    for (int r = 0; r < R; ++r) codes[r * p.C + c] = static_cast<uint8_t>(argmin16(score[r]));
  }
}

void encode_pq(const float* X, int64_t rows, const PqParams& p, uint8_t* codes) {
  constexpr int R = 4;
  int64_t r = 0;
  for (; r + R <= rows; r += R) pq_rows<R>(X + r * p.D, p, codes + r * p.C);
  for (; r < rows; ++r) pq_rows<1>(X + r * p.D, p, codes + r * p.C);
}

// ---------------------------------------------------------------------------------------------------------------
// HalutLookup, LUT as [Mpad][Cpad][16]: 4 outputs at a time (their tables stay in L1) over every 16-row block of
// the call.

constexpr int64_t kChunk = 256;  // codebooks per int16 chunk: |sum| <= 128 * 256 fits int16

// y = scale * sum + offset for 4 outputs x 4 rows, transposed to rows and stored (nm of the 4 outputs).
inline void store_rows(const int32x4_t sums[4], const float* scale, const float* offset, int64_t nm, int64_t nr,
                       float* out, int64_t M) {
  float32x4_t y[4];
  for (int j = 0; j < 4; ++j) {
    const float32x4_t scaled = vmulq_f32(vdupq_n_f32(scale[j]), vcvtq_f32_s32(sums[j]));
    y[j] = vaddq_f32(scaled, vdupq_n_f32(offset[j]));
  }
  // 4x4 transpose: y[j] holds output j of rows 0..3; row[i] gets outputs 0..3 of row i.
  const float32x4x2_t a = vtrnq_f32(y[0], y[1]), b = vtrnq_f32(y[2], y[3]);
  const float32x4_t row[4] = {
      vcombine_f32(vget_low_f32(a.val[0]), vget_low_f32(b.val[0])),
      vcombine_f32(vget_low_f32(a.val[1]), vget_low_f32(b.val[1])),
      vcombine_f32(vget_high_f32(a.val[0]), vget_high_f32(b.val[0])),
      vcombine_f32(vget_high_f32(a.val[1]), vget_high_f32(b.val[1])),
  };
  for (int64_t i = 0; i < nr; ++i) {
    if (nm == 4) {
      vst1q_f32(out + i * M, row[i]);
    } else {
      float lanes[4];
      vst1q_f32(lanes, row[i]);
      for (int64_t j = 0; j < nm; ++j) out[i * M + j] = lanes[j];
    }
  }
}

void lookup(const uint8_t* codes, int64_t rows, const LutParams& p, float* Y, void* scratch) {
  const int64_t blocks = (rows + 15) / 16;
  // Index bytes [block][Cpad][16 rows]: one codebook's codes of a block are one tbl index register.
  uint8_t* index = static_cast<uint8_t*>(scratch);
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t c = 0; c < p.Cpad; ++c) {
      uint8_t* dst = index + (block * p.Cpad + c) * 16;
      for (int64_t i = 0; i < 16; ++i) {
        const int64_t r = block * 16 + i;
        dst[i] = (r < rows && c < p.C) ? (codes[r * p.C + c] & 15) : 0;
      }
    }
  }
  const int64_t table_stride = p.Cpad * kCodes;
  for (int64_t m0 = 0; m0 < p.M; m0 += 4) {
    const int64_t nm = min64(4, p.M - m0);
    const int8_t* tables = p.lut + m0 * table_stride;  // Mpad is a multiple of 16: outputs m0..m0+3 exist
    for (int64_t block = 0; block < blocks; ++block) {
      const uint8_t* idx = index + block * p.Cpad * 16;
      int32x4_t total[4][4];  // [output][rows 4q .. 4q + 3]
      for (int j = 0; j < 4; ++j)
        for (int q = 0; q < 4; ++q) total[j][q] = vdupq_n_s32(0);
      for (int64_t c0 = 0; c0 < p.Cpad; c0 += kChunk) {
        const int64_t c1 = min64(p.Cpad, c0 + kChunk);
        int16x8_t lo[4], hi[4];  // rows 0..7 and 8..15
        for (int j = 0; j < 4; ++j) lo[j] = hi[j] = vdupq_n_s16(0);
        for (int64_t c = c0; c < c1; c += 2) {  // Cpad is a multiple of 4
          const uint8x16_t i0 = vld1q_u8(idx + c * 16), i1 = vld1q_u8(idx + (c + 1) * 16);
          for (int j = 0; j < 4; ++j) {
            const int8_t* t = tables + j * table_stride + c * kCodes;
            const int8x16_t s0 = vqtbl1q_s8(vld1q_s8(t), i0);
            const int8x16_t s1 = vqtbl1q_s8(vld1q_s8(t + 16), i1);
            lo[j] = vaddq_s16(lo[j], vaddl_s8(vget_low_s8(s0), vget_low_s8(s1)));
            hi[j] = vaddq_s16(hi[j], vaddl_high_s8(s0, s1));
          }
        }
        for (int j = 0; j < 4; ++j) {
          total[j][0] = vaddq_s32(total[j][0], vmovl_s16(vget_low_s16(lo[j])));
          total[j][1] = vaddq_s32(total[j][1], vmovl_high_s16(lo[j]));
          total[j][2] = vaddq_s32(total[j][2], vmovl_s16(vget_low_s16(hi[j])));
          total[j][3] = vaddq_s32(total[j][3], vmovl_high_s16(hi[j]));
        }
      }
      for (int64_t q = 0; q < 4; ++q) {
        const int64_t row0 = block * 16 + 4 * q;
        if (row0 >= rows) break;
        const int32x4_t sums[4] = {total[0][q], total[1][q], total[2][q], total[3][q]};
        store_rows(sums, p.scale + m0, p.offset + m0, nm, min64(4, rows - row0), Y + row0 * p.M + m0, p.M);
      }
    }
  }
}

}  // namespace

const IsaKernels& neon_kernels() {
  static const IsaKernels k{"neon", false, scalar_kernels().encode_tree, encode_pq, lookup};
  return k;
}

}  // namespace halut::cpu
