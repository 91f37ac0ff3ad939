// HalutEncodePQ: codes[..., C] by nearest prototype under the folded metric (docs/ops.md).
#pragma once

#include <optional>

#include "../cpu/pack.h"
#include "kernel_base.h"

namespace halut {

class EncodePqKernel : public KernelBase {
 public:
  static constexpr const char* kName = "HalutEncodePQ";
  static constexpr size_t kInputCount = 3;  // X, vectors, biases
  static constexpr int kOutputTypes[] = {ort::kUint8};

  EncodePqKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 protected:  // the CUDA kernels (cuda_ops.h) reuse the validation and packing
  // The run's input X: float [..., D] with vectors' D. Returns D.
  int64_t check_x(const TensorView& X, const cpu::PackedPq& pq) const;

  std::optional<cpu::PackedPq> packed_;
};

}  // namespace halut
