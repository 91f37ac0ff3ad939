// Packing of the ops' weights into the kernels' layouts (kernels.h). Done once at kernel creation for constant
// weights, per run otherwise. The caller has validated shapes and dtypes.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels.h"

namespace halut::cpu {

struct PackedTree {
  std::vector<int32_t> split_dims;  // [C][4]
  std::vector<float> thresholds;    // [C][16]
  int64_t C = 0;
  int64_t max_split = -1;  // largest split dim: checked against each run's D
  TreeParams params() const { return {split_dims.data(), thresholds.data(), C}; }
};

// split_dims [C, 4] must all lie in 0 .. INT32_MAX (checked by the caller).
PackedTree pack_tree(const int64_t* split_dims, const float* thresholds, int64_t C);

struct PackedPq {
  std::vector<float> vectors_t;  // [D][16]
  std::vector<float> biases;     // [C][16]
  std::vector<int64_t> bounds;   // [C + 1]
  int64_t C = 0, D = 0;
  PqParams params() const { return {vectors_t.data(), biases.data(), bounds.data(), C, D}; }
};

// vectors [16, D], biases [C, 16], 1 <= C <= D.
PackedPq pack_pq(const float* vectors, const float* biases, int64_t C, int64_t D);

struct PackedLut {
  std::vector<int8_t> lut;           // [Mpad][Cpad][16], or [Cpad][16][Mpad] when code-major
  std::vector<float> scale, offset;  // [Mpad]
  int64_t M = 0, C = 0, Mpad = 0, Cpad = 0;
  LutParams params() const { return {lut.data(), scale.data(), offset.data(), M, C, Mpad, Cpad, false}; }
};

// lut [M, C, 16], scale [M], offset [M]; code_major picks the layout the kernels ask for (IsaKernels).
PackedLut pack_lut(const int8_t* lut, const float* scale, const float* offset, int64_t M, int64_t C, bool code_major);

}  // namespace halut::cpu
