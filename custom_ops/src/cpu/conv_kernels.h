// Column-major tree encoding for the conv encode op: the gathered patch elements of a block of output positions are
// stored element-major (cols[u * ld + r]), so that consecutive positions of one element sit side by side and a SIMD
// tree reads them with plain loads instead of gathers. Only the instruction sets where it pays have one; the host
// falls back to the row-major kernels otherwise.
#pragma once

#include "kernels.h"

namespace halut::cpu {

// codes[r * C + c] for r < rows (<= ld) from cols[u * ld + r], with p.split_dims indexing u.
using EncodeTreeColsFn = void (*)(const float* cols, int64_t ld, int64_t rows, const TreeParams& p, uint8_t* codes);

// The column-major tree kernel of the instruction set `isa_name` (IsaKernels::name), or NULL where there is none.
EncodeTreeColsFn encode_tree_cols_for(const char* isa_name);

// The same for pq: codes[r * C + c] for r < rows (<= ld) from cols[d * ld + r], d < p.D (every patch element).
using EncodePqColsFn = void (*)(const float* cols, int64_t ld, int64_t rows, const PqParams& p, uint8_t* codes);
EncodePqColsFn encode_pq_cols_for(const char* isa_name);

// Y[m * ldy + r] for m < M, r < rows (<= kLookupMaxRows) from codes[r][C]: the lookup written channel-major (NCHW).
// LutParams in the row-major layout ([Mpad][Cpad][16]); scratch as for IsaKernels::lookup.
using LookupNchwFn = void (*)(const uint8_t* codes, int64_t rows, const LutParams& p, float* Y, int64_t ldy,
                              void* scratch);
LookupNchwFn lookup_nchw_for(const char* isa_name);

#if defined(HALUT_X86_KERNELS)
void encode_tree_cols_avx512(const float* cols, int64_t ld, int64_t rows, const TreeParams& p, uint8_t* codes);
void encode_pq_cols_avx512(const float* cols, int64_t ld, int64_t rows, const PqParams& p, uint8_t* codes);
void lookup_nchw_avx512(const uint8_t* codes, int64_t rows, const LutParams& p, float* Y, int64_t ldy,
                        void* scratch);
#endif

}  // namespace halut::cpu
