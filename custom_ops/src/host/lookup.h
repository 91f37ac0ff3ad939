// HalutLookup: Y[..., M] = scale * (sum over codebooks of lut[m, c, code & 15]) + offset (docs/ops.md).
#pragma once

#include <optional>

#include "../cpu/pack.h"
#include "kernel_base.h"

namespace halut {

class LookupKernel : public KernelBase {
 public:
  static constexpr const char* kName = "HalutLookup";
  static constexpr size_t kInputCount = 4;  // codes, lut, scale, offset
  static constexpr int kOutputTypes[] = {ort::kFloat};

  LookupKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 protected:  // the CUDA kernels (cuda_ops.h) reuse the validation and packing

  std::optional<cpu::PackedLut> packed_;  // set when lut, scale and offset are all initializers
};

}  // namespace halut
