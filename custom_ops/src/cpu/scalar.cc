// Scalar kernels: the plain transcription of docs/ops.md that every SIMD path is tested against, and the path used
// on CPUs without AVX2.
#include "kernels.h"

namespace halut::cpu {
namespace {

void encode_tree(const float* X, int64_t rows, int64_t D, const TreeParams& p, uint8_t* codes) {
  for (int64_t n = 0; n < rows; ++n) {
    const float* x = X + n * D;
    for (int64_t c = 0; c < p.C; ++c) {
      const int32_t* dims = p.split_dims + c * kTreeDepth;
      const float* t = p.thresholds + c * 16;
      int node = 0;
      for (int level = 0; level < kTreeDepth; ++level) {
        node = 2 * node + (x[dims[level]] > t[(1 << level) - 1 + node] ? 1 : 0);
      }
      codes[n * p.C + c] = static_cast<uint8_t>(node);
    }
  }
}

void encode_pq(const float* X, int64_t rows, const PqParams& p, uint8_t* codes) {
  for (int64_t n = 0; n < rows; ++n) {
    const float* x = X + n * p.D;
    for (int64_t c = 0; c < p.C; ++c) {
      float score[kCodes];
      for (int k = 0; k < kCodes; ++k) score[k] = p.biases[c * kCodes + k];
      for (int64_t d = p.bounds[c]; d < p.bounds[c + 1]; ++d) {
        const float* v = p.vectors_t + d * kCodes;
        for (int k = 0; k < kCodes; ++k) {
          const float product = x[d] * v[k];  // a separate statement: rounded before the add (no FMA)
          score[k] = score[k] + product;
        }
      }
      // The scan of docs/ops.md with the running minimum in a variable: selects instead of branches (random
      // scores mispredict), same result since best_score is always score[best].
      int best = 0;
      float best_score = score[0];
      for (int k = 1; k < kCodes; ++k) {
        const bool better = score[k] < best_score;
        best = better ? k : best;
        best_score = better ? score[k] : best_score;
      }
      codes[n * p.C + c] = static_cast<uint8_t>(best);
    }
  }
}

// Code-major LUT ([Cpad][16][Mpad]): each code selects one contiguous row of M entries, so the adds run along m
// and the compiler vectorizes them with the baseline instruction set (no shuffles needed).
void lookup(const uint8_t* codes, int64_t rows, const LutParams& p, float* Y, void* scratch) {
  int32_t* sums = static_cast<int32_t*>(scratch);
  for (int64_t n = 0; n < rows; ++n) {
    const uint8_t* code = codes + n * p.C;
    for (int64_t m = 0; m < p.M; ++m) sums[m] = 0;
    for (int64_t c = 0; c < p.C; ++c) {
      const int8_t* entries = p.lut + (c * kCodes + (code[c] & 15)) * p.Mpad;
      for (int64_t m = 0; m < p.M; ++m) sums[m] += entries[m];
    }
    float* y = Y + n * p.M;
    for (int64_t m = 0; m < p.M; ++m) {
      const float scaled = p.scale[m] * static_cast<float>(sums[m]);
      y[m] = scaled + p.offset[m];
    }
  }
}

}  // namespace

const IsaKernels& scalar_kernels() {
  static const IsaKernels k{"scalar", true, encode_tree, encode_pq, lookup};
  return k;
}

}  // namespace halut::cpu
