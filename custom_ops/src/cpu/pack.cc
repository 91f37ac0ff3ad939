#include "pack.h"

#include <algorithm>
#include <cstring>

namespace halut::cpu {

PackedTree pack_tree(const int64_t* split_dims, const float* thresholds, int64_t C) {
  PackedTree p;
  p.C = C;
  p.split_dims.resize(static_cast<size_t>(C * kTreeDepth));
  p.thresholds.assign(static_cast<size_t>(C * 16), 0.0f);
  for (int64_t i = 0; i < C * kTreeDepth; ++i) {
    p.split_dims[i] = static_cast<int32_t>(split_dims[i]);
    p.max_split = std::max(p.max_split, split_dims[i]);
  }
  for (int64_t c = 0; c < C; ++c) {
    std::memcpy(&p.thresholds[c * 16], thresholds + c * kTreeNodes, kTreeNodes * sizeof(float));
  }
  return p;
}

PackedPq pack_pq(const float* vectors, const float* biases, int64_t C, int64_t D) {
  PackedPq p;
  p.C = C;
  p.D = D;
  p.vectors_t.resize(static_cast<size_t>(D * kCodes));
  for (int64_t k = 0; k < kCodes; ++k)
    for (int64_t d = 0; d < D; ++d) p.vectors_t[d * kCodes + k] = vectors[k * D + d];
  p.biases.assign(biases, biases + C * kCodes);
  p.bounds.resize(static_cast<size_t>(C + 1));
  for (int64_t c = 0; c <= C; ++c) p.bounds[c] = c * (D / C) + std::min(c, D % C);
  return p;
}

PackedLut pack_lut(const int8_t* lut, const float* scale, const float* offset, int64_t M, int64_t C,
                   bool code_major) {
  PackedLut p;
  p.M = M;
  p.C = C;
  p.Mpad = (M + 15) / 16 * 16;
  p.Cpad = (C + 3) / 4 * 4;
  p.lut.assign(static_cast<size_t>(p.Mpad * p.Cpad * kCodes), 0);
  if (code_major) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t ck = 0; ck < C * kCodes; ++ck) p.lut[ck * p.Mpad + m] = lut[m * C * kCodes + ck];
  } else {
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(&p.lut[m * p.Cpad * kCodes], lut + m * C * kCodes, static_cast<size_t>(C * kCodes));
    }
  }
  p.scale.assign(static_cast<size_t>(p.Mpad), 0.0f);
  p.offset.assign(static_cast<size_t>(p.Mpad), 0.0f);
  std::copy(scale, scale + M, p.scale.begin());
  std::copy(offset, offset + M, p.offset.begin());
  return p;
}

}  // namespace halut::cpu
