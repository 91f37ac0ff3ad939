#include "dispatch.h"

#include <cstring>

namespace halut::cpu {
namespace {

#if defined(HALUT_X86_KERNELS)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

// vpermb (VBMI) and vpdpbusd (VNNI) carry the lookup; every CPU with VBMI but Cannon Lake also has VNNI.
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
         __builtin_cpu_supports("avx512vnni");
}
const IsaKernels& avx2_or_scalar() { return avx2_kernels(); }
const IsaKernels& avx512_or_scalar() { return avx512_kernels(); }
#else
// Not an x86-64 build: no AVX kernels.
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
const IsaKernels& avx2_or_scalar() { return scalar_kernels(); }
const IsaKernels& avx512_or_scalar() { return scalar_kernels(); }
#endif

#if defined(HALUT_ARM_KERNELS)
// NEON is part of the AArch64 baseline: every CPU that runs this build has it.
bool cpu_has_neon() { return true; }
const IsaKernels& neon_or_scalar() { return neon_kernels(); }
#else
bool cpu_has_neon() { return false; }
const IsaKernels& neon_or_scalar() { return scalar_kernels(); }
#endif

}  // namespace

std::string supported_isas() {
  std::string names = "scalar";
  if (cpu_has_avx2()) names += ", avx2";
  if (cpu_has_avx512()) names += ", avx512";
  if (cpu_has_neon()) names += ", neon";
  return names;
}

const IsaKernels* select_kernels(const char* forced, std::string* error) {
  if (forced == nullptr || *forced == '\0') {
    if (cpu_has_avx512()) return &avx512_or_scalar();
    if (cpu_has_avx2()) return &avx2_or_scalar();
    if (cpu_has_neon()) return &neon_or_scalar();
    return &scalar_kernels();
  }
  if (std::strcmp(forced, "scalar") == 0) return &scalar_kernels();
  if (std::strcmp(forced, "avx2") == 0 && cpu_has_avx2()) return &avx2_or_scalar();
  if (std::strcmp(forced, "avx512") == 0 && cpu_has_avx512()) return &avx512_or_scalar();
  if (std::strcmp(forced, "neon") == 0 && cpu_has_neon()) return &neon_or_scalar();
  if (std::strcmp(forced, "avx2") == 0 || std::strcmp(forced, "avx512") == 0 || std::strcmp(forced, "neon") == 0) {
    *error = std::string("HALUT_ONNX_ISA=") + forced + " but this CPU lacks it (supported: " + supported_isas() + ")";
  } else {
    *error = std::string("HALUT_ONNX_ISA=") + forced + " is not one of scalar, avx2, avx512, neon";
  }
  return nullptr;
}

}  // namespace halut::cpu
