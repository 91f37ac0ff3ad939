// HalutEncodeTree: codes[..., C] from C depth-4 decision trees over X[..., D] (docs/ops.md).
#pragma once

#include <optional>

#include "../cpu/pack.h"
#include "kernel_base.h"

namespace halut {

class EncodeTreeKernel : public KernelBase {
 public:
  static constexpr const char* kName = "HalutEncodeTree";
  static constexpr size_t kInputCount = 3;  // X, split_dims, thresholds
  static constexpr int kOutputTypes[] = {ort::kUint8};

  EncodeTreeKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 protected:  // the CUDA kernels (cuda_ops.h) reuse the validation and packing
  cpu::PackedTree pack(const TensorView& split_dims, const TensorView& thresholds) const;
  // The run's input X: float [..., D] with D >= C and every split dim inside it. Returns D.
  int64_t check_x(const TensorView& X, const cpu::PackedTree& tree) const;

  std::optional<cpu::PackedTree> packed_;
};

}  // namespace halut
