// The library's entry point: registers the ai.halut domain with its CPU ops (and their CUDA twins when built
// with CUDA).
#include <string>

#include "conv.h"
#include "encode_pq.h"
#include "encode_tree.h"
#include "lookup.h"
#include "op_def.h"

namespace halut {
namespace {

// onnxruntime keeps pointers to the op records for the lifetime of every session: static storage.
const OpDef<EncodeTreeKernel> kEncodeTree;
const OpDef<EncodePqKernel> kEncodePq;
const OpDef<LookupKernel> kLookup;
const OpDef<EncodeTreeConvKernel> kEncodeTreeConv;
const OpDef<EncodePqConvKernel> kEncodePqConv;
const OpDef<LookupConvKernel> kLookupConv;

}  // namespace

#ifdef HALUT_ONNX_CUDA
// The same ops for onnxruntime's CUDA execution provider (cuda_ops.cc; declared here so this file needs no CUDA
// headers).
const OrtCustomOp* const* cuda_op_records(size_t* count);
#endif

OrtStatus* status_from_exception(const ort::Api& api) {
  try {
    throw;
  } catch (const StatusError& e) {
    return e.status;
  } catch (const InvalidArgument& e) {
    return api.CreateStatus(ort::kInvalidArgument, e.what());
  } catch (const std::bad_alloc&) {
    return api.CreateStatus(ort::kFail, "halut-onnx: out of memory");
  } catch (const std::exception& e) {
    return api.CreateStatus(ort::kFail, e.what());
  } catch (...) {
    return api.CreateStatus(ort::kFail, "halut-onnx: unknown error");
  }
}

}  // namespace halut

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                              const OrtApiBase* api_base) {
  using halut::ort::Api;
  const OrtApi* api = api_base->GetApi(halut::ort::kApiVersion);
  if (api == nullptr) {
    // Version 1 exists in every onnxruntime: enough to report the problem.
    const OrtApi* v1 = api_base->GetApi(1);
    const std::string msg = "halut-onnx needs onnxruntime >= 1.17 (C API 17); this onnxruntime is " +
                            std::string(api_base->GetVersionString());
    return v1 ? Api(v1).CreateStatus(halut::ort::kFail, msg.c_str()) : nullptr;
  }
  Api ort(api);
  try {
    OrtCustomOpDomain* domain = nullptr;
    // A fresh domain per call (one per SessionOptions); onnxruntime never frees it, and the sessions using it may
    // outlive anything we could hook a release to, so it lives until the process exits.
    if (OrtStatus* s = ort.CreateCustomOpDomain("ai.halut", &domain)) return s;
    for (const OrtCustomOp* op : {static_cast<const OrtCustomOp*>(&halut::kEncodeTree),
                                  static_cast<const OrtCustomOp*>(&halut::kEncodePq),
                                  static_cast<const OrtCustomOp*>(&halut::kLookup),
                                  static_cast<const OrtCustomOp*>(&halut::kEncodeTreeConv),
                                  static_cast<const OrtCustomOp*>(&halut::kEncodePqConv),
                                  static_cast<const OrtCustomOp*>(&halut::kLookupConv)}) {
      if (OrtStatus* s = ort.CustomOpDomain_Add(domain, op)) return s;
    }
#ifdef HALUT_ONNX_CUDA
    size_t cuda_count = 0;
    const OrtCustomOp* const* cuda_ops = halut::cuda_op_records(&cuda_count);
    for (size_t i = 0; i < cuda_count; ++i) {
      if (OrtStatus* s = ort.CustomOpDomain_Add(domain, cuda_ops[i])) return s;
    }
#endif
    return ort.AddCustomOpDomain(options, domain);
  } catch (...) {
    return halut::status_from_exception(ort);
  }
}
