// Run-time choice of the CPU kernels: the best instruction set the CPU supports, or the one HALUT_ONNX_ISA forces.
#pragma once

#include <string>

#include "kernels.h"

namespace halut::cpu {

// The kernels for `forced` ("scalar", "avx2", "avx512"; empty or NULL = the best this CPU supports).
// Returns NULL and sets *error when the name is unknown or the CPU lacks that instruction set.
const IsaKernels* select_kernels(const char* forced, std::string* error);

// Names of the instruction sets this CPU can run, best last (for messages).
std::string supported_isas();

}  // namespace halut::cpu
