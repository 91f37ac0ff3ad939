// Pointer-level CPU kernels of the Halut ops: no onnxruntime types, no validation (the host layer in src/host has
// done it), no exceptions. One implementation per instruction set (scalar.cc, avx2.cc, avx512.cc, neon.cc), each compiled
// for its own target; dispatch.cc picks one at run time. The per-ISA files include only this header and intrinsics
// (no STL), so no inline template gets compiled with instructions the running CPU may lack.
#pragma once

#include <cstddef>
#include <cstdint>

namespace halut::cpu {

constexpr int64_t kCodes = 16;      // prototypes per codebook
constexpr int64_t kTreeDepth = 4;   // levels per tree
constexpr int64_t kTreeNodes = 15;  // thresholds per tree

// Parallel tasks cover multiples of this many rows (whole SIMD row blocks).
constexpr int64_t kRowGranularity = 64;
// Rows handed to one lookup call at most: the kernel keeps each slice of the LUT in cache across these rows.
constexpr int64_t kLookupMaxRows = 256;

// Packed HalutEncodeTree weights (pack.cc): split dims as int32 [C][4], thresholds [C][16] (slot 15 unused).
struct TreeParams {
  const int32_t* split_dims;
  const float* thresholds;
  int64_t C;
};

// Packed HalutEncodePQ weights: vectors transposed to [D][16] (one prototype per SIMD lane), biases [C][16],
// slice bounds [C + 1].
struct PqParams {
  const float* vectors_t;
  const float* biases;
  const int64_t* bounds;
  int64_t C;
  int64_t D;
};

// Packed HalutLookup weights: lut zero-padded to [Mpad][Cpad][16] (Mpad multiple of 16, Cpad of 4; padded entries
// are 0 so padded codebooks add nothing), or to [Cpad][16][Mpad] for kernels that ask for the code-major layout;
// scale/offset zero-padded to Mpad.
struct LutParams {
  const int8_t* lut;
  const float* scale;
  const float* offset;
  int64_t M, C, Mpad, Cpad;
  bool stream_output;  // Y is large: a kernel may write it with non-temporal stores
};

// One instruction set's kernels: row-major inputs and outputs.
struct IsaKernels {
  const char* name;
  bool lut_code_major;  // the lookup wants LutParams::lut as [Cpad][16][Mpad]
  // codes[rows][C] from X[rows][D], any number of rows.
  void (*encode_tree)(const float* X, int64_t rows, int64_t D, const TreeParams& p, uint8_t* codes);
  void (*encode_pq)(const float* X, int64_t rows, const PqParams& p, uint8_t* codes);
  // Y[rows][M] from codes[rows][C], rows <= kLookupMaxRows; scratch holds lookup_scratch_bytes(Cpad, Mpad)
  // bytes, 64-byte aligned.
  void (*lookup)(const uint8_t* codes, int64_t rows, const LutParams& p, float* Y, void* scratch);
};

inline size_t lookup_scratch_bytes(int64_t Cpad, int64_t Mpad) {
  const int64_t index_bytes = kLookupMaxRows * Cpad, sum_bytes = Mpad * 4;
  return static_cast<size_t>(index_bytes > sum_bytes ? index_bytes : sum_bytes);
}

const IsaKernels& scalar_kernels();
const IsaKernels& avx2_kernels();
const IsaKernels& avx512_kernels();
const IsaKernels& neon_kernels();  // AArch64 builds only

}  // namespace halut::cpu
