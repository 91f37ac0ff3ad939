#include <cstring>

#include "conv_kernels.h"

namespace halut::cpu {

EncodeTreeColsFn encode_tree_cols_for(const char* isa_name) {
#if defined(HALUT_X86_KERNELS)
  if (std::strcmp(isa_name, "avx512") == 0) return encode_tree_cols_avx512;
#endif
  (void)isa_name;
  return nullptr;
}

EncodePqColsFn encode_pq_cols_for(const char* isa_name) {
#if defined(HALUT_X86_KERNELS)
  if (std::strcmp(isa_name, "avx512") == 0) return encode_pq_cols_avx512;
#endif
  (void)isa_name;
  return nullptr;
}

LookupNchwFn lookup_nchw_for(const char* isa_name) {
#if defined(HALUT_X86_KERNELS)
  if (std::strcmp(isa_name, "avx512") == 0) return lookup_nchw_avx512;
#endif
  (void)isa_name;
  return nullptr;
}

}  // namespace halut::cpu
