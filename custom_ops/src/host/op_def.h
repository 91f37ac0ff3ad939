// The OrtCustomOp record of one op, built from its kernel class, and the C boundary: every callback catches all
// C++ exceptions and turns them into an OrtStatus.
//
// A kernel class provides: kName, kInputCount, kOutputTypes[], a constructor (const OrtApi*, const OrtKernelInfo*)
// and void Compute(OrtKernelContext*). Inputs are declared untyped so that a wrong dtype reaches the kernel's own
// check (with its message naming the node) instead of failing onnxruntime's type inference anonymously.
#pragma once

#include <cstring>
#include <new>

#include "kernel_base.h"

namespace halut {

// Converts the exception in flight (called inside a catch block) into a status.
OrtStatus* status_from_exception(const ort::Api& api);

template <typename Kernel>
struct OpDef : OrtCustomOp {
  OpDef() {
    std::memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
    version = ort::kApiVersion;  // onnxruntime <= 1.28 rejects a version above its own API
    GetName = [](const OrtCustomOp*) { return Kernel::kName; };
    GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };  // CPU
    GetInputType = [](const OrtCustomOp*, size_t) { return static_cast<int>(ort::kUndefined); };
    GetInputTypeCount = [](const OrtCustomOp*) { return Kernel::kInputCount; };
    GetOutputType = [](const OrtCustomOp*, size_t i) { return Kernel::kOutputTypes[i]; };
    GetOutputTypeCount = [](const OrtCustomOp*) { return sizeof(Kernel::kOutputTypes) / sizeof(int); };
    KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return 0; };  // required
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return 0; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return 0; };  // default (CPU) memory
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 0; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 0; };
    CreateKernelV2 = [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                        void** kernel) -> OrtStatus* {
      *kernel = nullptr;
      try {
        *kernel = new Kernel(api, info);
        return nullptr;
      } catch (...) {
        return status_from_exception(ort::Api(api));
      }
    };
    KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatus* {
      try {
        static_cast<Kernel*>(kernel)->Compute(ctx);
        return nullptr;
      } catch (...) {
        return status_from_exception(static_cast<Kernel*>(kernel)->api());
      }
    };
  }
};

}  // namespace halut
