// The subset of onnxruntime's public C ABI this library uses, declared here because no package ships the headers
// (see /work/shared/ort-abi-facts.md). The ABI is append-only: a slot index never changes once released, so the
// OrtApi table is read by index instead of through a struct with hundreds of members.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

struct OrtStatus;
struct OrtApi;  // never dereferenced as a struct: read as a table of function pointers (halut::ort::Api)
struct OrtSessionOptions;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtCustomOpDomain;
struct OrtShapeInferContext;

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

// Field order is the ABI; onnxruntime reads fields depending on `version` (see the facts sheet).
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  int (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  int (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  int (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  int (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
  int (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** kernel);
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
  OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* context);
  int (*GetStartVersion)(const OrtCustomOp* op);
  int (*GetEndVersion)(const OrtCustomOp* op);
  size_t (*GetMayInplace)(int** input_index, int** output_index);
  void (*ReleaseMayInplace)(int* input_index, int* output_index);
  size_t (*GetAliasMap)(int** input_index, int** output_index);
  void (*ReleaseAliasMap)(int* input_index, int* output_index);
};

}  // extern "C"

static_assert(sizeof(void*) == 8, "the OrtCustomOp layout below assumes LP64");
static_assert(sizeof(OrtCustomOp) == 208, "OrtCustomOp must match onnxruntime's layout");

namespace halut::ort {

// The API version this library requests: KernelContext_ParallelFor (slot 274) arrived in 17.
constexpr uint32_t kApiVersion = 17;

enum ErrorCode : int { kOk = 0, kFail = 1, kInvalidArgument = 2, kNotImplemented = 9, kInvalidGraph = 10 };

enum ElementType : int {
  kUndefined = 0,
  kFloat = 1,
  kUint8 = 2,
  kInt8 = 3,
  kUint16 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kString = 8,
  kBool = 9,
  kFloat16 = 10,
  kDouble = 11,
  kUint32 = 12,
  kUint64 = 13,
  kBfloat16 = 16,
};

// Typed access to the OrtApi slots used here. Each accessor names its slot once; the table is only ever indexed
// by these constants, all below kApiVersion's table size.
class Api {
 public:
  explicit Api(const OrtApi* api) : table_(reinterpret_cast<const void* const*>(api)) {}

  OrtStatus* CreateStatus(int code, const char* msg) const {
    return slot<OrtStatus* (*)(int, const char*)>(0)(code, msg);
  }
  int GetErrorCode(const OrtStatus* s) const { return slot<int (*)(const OrtStatus*)>(1)(s); }
  const char* GetErrorMessage(const OrtStatus* s) const { return slot<const char* (*)(const OrtStatus*)>(2)(s); }
  OrtStatus* CreateCustomOpDomain(const char* domain, OrtCustomOpDomain** out) const {
    return slot<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(26)(domain, out);
  }
  OrtStatus* CustomOpDomain_Add(OrtCustomOpDomain* domain, const OrtCustomOp* op) const {
    return slot<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(27)(domain, op);
  }
  OrtStatus* AddCustomOpDomain(OrtSessionOptions* options, OrtCustomOpDomain* domain) const {
    return slot<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(28)(options, domain);
  }
  OrtStatus* GetTensorMutableData(OrtValue* value, void** out) const {
    return slot<OrtStatus* (*)(OrtValue*, void**)>(51)(value, out);
  }
  OrtStatus* GetTensorElementType(const OrtTensorTypeAndShapeInfo* info, int* out) const {
    return slot<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int*)>(60)(info, out);
  }
  OrtStatus* GetDimensionsCount(const OrtTensorTypeAndShapeInfo* info, size_t* out) const {
    return slot<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(61)(info, out);
  }
  OrtStatus* GetDimensions(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t len) const {
    return slot<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(62)(info, dims, len);
  }
  OrtStatus* GetTensorTypeAndShape(const OrtValue* value, OrtTensorTypeAndShapeInfo** out) const {
    return slot<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(65)(value, out);
  }
  OrtStatus* KernelInfoGetAttribute_string(const OrtKernelInfo* info, const char* name, char* out,
                                          size_t* size) const {
    return slot<OrtStatus* (*)(const OrtKernelInfo*, const char*, char*, size_t*)>(87)(info, name, out, size);
  }
  OrtStatus* KernelInfoGetAttributeArray_int64(const OrtKernelInfo* info, const char* name, int64_t* out,
                                               size_t* count) const {
    return slot<OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*, size_t*)>(163)(info, name, out, count);
  }
  OrtStatus* KernelContext_GetInputCount(const OrtKernelContext* ctx, size_t* out) const {
    return slot<OrtStatus* (*)(const OrtKernelContext*, size_t*)>(88)(ctx, out);
  }
  OrtStatus* KernelContext_GetInput(const OrtKernelContext* ctx, size_t index, const OrtValue** out) const {
    return slot<OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**)>(90)(ctx, index, out);
  }
  OrtStatus* KernelContext_GetOutput(OrtKernelContext* ctx, size_t index, const int64_t* dims, size_t rank,
                                     OrtValue** out) const {
    return slot<OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(91)(ctx, index, dims,
                                                                                                   rank, out);
  }
  void ReleaseStatus(OrtStatus* s) const { slot<void (*)(OrtStatus*)>(93)(s); }
  void ReleaseTensorTypeAndShapeInfo(OrtTensorTypeAndShapeInfo* info) const {
    slot<void (*)(OrtTensorTypeAndShapeInfo*)>(99)(info);
  }
  OrtStatus* KernelInfo_GetInputCount(const OrtKernelInfo* info, size_t* out) const {
    return slot<OrtStatus* (*)(const OrtKernelInfo*, size_t*)>(230)(info, out);
  }
  OrtStatus* KernelInfo_GetNodeName(const OrtKernelInfo* info, char* out, size_t* size) const {
    return slot<OrtStatus* (*)(const OrtKernelInfo*, char*, size_t*)>(244)(info, out, size);
  }
  OrtStatus* KernelInfoGetConstantInput_tensor(const OrtKernelInfo* info, size_t index, int* is_constant,
                                               const OrtValue** out) const {
    return slot<OrtStatus* (*)(const OrtKernelInfo*, size_t, int*, const OrtValue**)>(249)(info, index, is_constant,
                                                                                          out);
  }
  // The CUDA execution provider's cudaStream_t for this run (NULL on the CPU provider); since API 10.
  OrtStatus* KernelContext_GetGPUComputeStream(const OrtKernelContext* ctx, void** stream) const {
    return slot<OrtStatus* (*)(const OrtKernelContext*, void**)>(193)(ctx, stream);
  }
  using ParallelFn = void (*)(void* user, size_t i);
  OrtStatus* KernelContext_ParallelFor(const OrtKernelContext* ctx, ParallelFn fn, size_t total, size_t num_batch,
                                       void* user) const {
    return slot<OrtStatus* (*)(const OrtKernelContext*, ParallelFn, size_t, size_t, void*)>(274)(ctx, fn, total,
                                                                                                 num_batch, user);
  }

 private:
  template <typename Fn>
  Fn slot(size_t index) const {
    return reinterpret_cast<Fn>(const_cast<void*>(table_[index]));
  }
  const void* const* table_;
};

}  // namespace halut::ort
