#include "cuda_ops.h"

#include <cstdint>
#include <limits>
#include <string>

#include "op_def.h"

namespace halut {
namespace {

constexpr int kEpFail = 11;  // ORT_EP_FAIL
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

}  // namespace

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset(other.ptr_);
    other.ptr_ = nullptr;
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { reset(nullptr); }

void DeviceBuffer::reset(void* ptr) {
  // Only reached at kernel destruction or on a failed creation; a cudaFree error there has no one to report to.
  if (ptr_ != nullptr) static_cast<void>(cudaFree(ptr_));
  ptr_ = ptr;
}

// ---------------------------------------------------------------------------------------------------------------

HostWeightsGuard::HostWeightsGuard(const OrtApi* api_table, const OrtKernelInfo* info, const char* op) {
  const ort::Api api(api_table);
  auto check = [&](OrtStatus* status) {
    if (status != nullptr) throw StatusError{status};
  };
  size_t inputs = 0;
  check(api.KernelInfo_GetInputCount(info, &inputs));
  for (size_t i = 1; i < inputs; ++i) {
    int is_constant = 0;
    const OrtValue* value = nullptr;
    check(api.KernelInfoGetConstantInput_tensor(info, i, &is_constant, &value));
    if (!is_constant || value == nullptr) continue;
    void* data = nullptr;
    check(api.GetTensorMutableData(const_cast<OrtValue*>(value), &data));
    cudaPointerAttributes attributes{};
    if (data == nullptr || cudaPointerGetAttributes(&attributes, data) != cudaSuccess) {
      // Host memory (CUDA >= 11 answers cudaMemoryTypeUnregistered for it) or CUDA unusable, which query_device
      // in CudaKernel reports with the node's name.
      static_cast<void>(cudaGetLastError());
      continue;
    }
    if (attributes.type == cudaMemoryTypeDevice) {
      size_t size = 0;
      std::string node;
      if (OrtStatus* s = api.KernelInfo_GetNodeName(info, nullptr, &size)) {
        api.ReleaseStatus(s);  // the message goes out without the name
        size = 0;
      }
      if (size > 0) {
        node.resize(size);
        if (OrtStatus* s = api.KernelInfo_GetNodeName(info, node.data(), &size)) api.ReleaseStatus(s);
        node.resize(size > 0 ? size - 1 : 0);
      }
      const std::string msg = std::string(op) + " node '" + node + "': onnxruntime placed constant input " +
                              std::to_string(i) + " in device memory although the op declares it a CPU input "
                              "(OrtMemTypeCPUInput); this onnxruntime is not supported by the CUDA kernels";
      throw StatusError{api.CreateStatus(kEpFail, msg.c_str())};
    }
  }
}

template <typename Base>
CudaKernel<Base>::CudaKernel(const OrtApi* api, const OrtKernelInfo* info)
    : HostWeightsGuard(api, info, Base::kName), Base(api, info) {
  // The device current at kernel creation is the one onnxruntime's CUDA provider made current for this session.
  cuda_check(cuda::query_device(&dev_), "cudaGetDevice / cudaDeviceGetAttribute");
}

template <typename Base>
void CudaKernel<Base>::cuda_check(cudaError_t err, const char* what) const {
  if (err == cudaSuccess) return;
  const std::string msg = this->op_ + " node '" + this->node_ + "': CUDA error in " + what + ": " +
                          cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  throw StatusError{this->api_.CreateStatus(kEpFail, msg.c_str())};
}

template <typename Base>
template <typename T>
DeviceBuffer CudaKernel<Base>::upload(const std::vector<T>& host, const char* what) const {
  DeviceBuffer buffer;
  const size_t bytes = host.size() * sizeof(T);
  void* ptr = nullptr;
  cuda_check(cudaMalloc(&ptr, bytes > 0 ? bytes : 1), (std::string("cudaMalloc for ") + what).c_str());
  buffer.reset(ptr);
  if (bytes > 0) {
    cuda_check(cudaMemcpy(ptr, host.data(), bytes, cudaMemcpyHostToDevice),
               (std::string("cudaMemcpy of ") + what).c_str());
  }
  return buffer;
}

template <typename Base>
cudaStream_t CudaKernel<Base>::stream(OrtKernelContext* ctx) const {
  void* handle = nullptr;
  this->check(this->api_.KernelContext_GetGPUComputeStream(ctx, &handle));
  cudaStream_t s = static_cast<cudaStream_t>(handle);
  int device = 0;
  cuda_check(cudaStreamGetDevice(s, &device), "cudaStreamGetDevice");
  if (device != dev_.id) {
    this->invalid("onnxruntime runs this node on CUDA device " + std::to_string(device) +
                  " but its weights were uploaded to device " + std::to_string(dev_.id) +
                  " (the device current when the session was created)");
  }
  return s;
}

template <typename Base>
void CudaKernel<Base>::need_constants(const char* inputs) const {
  this->invalid(std::string("the CUDA kernel needs ") + inputs +
                " to be constant initializers (found a graph input or a computed tensor); make them initializers "
                "or run this node on the CPU provider");
}

namespace {

// The CUDA lookups sum the table as unsigned bytes, entry + 128 (halut_cuda.cu): the int8 bits with the sign flipped.
std::vector<int8_t> biased_lut(const std::vector<int8_t>& lut) {
  std::vector<int8_t> out(lut);
  for (int8_t& e : out) e = static_cast<int8_t>(static_cast<uint8_t>(e) ^ 0x80u);
  return out;
}

// Conv geometry as the CUDA kernels take it. Returns the problem when an index they form in 32 bits (positions,
// patch offsets, the plane size Ho * Wo) could pass 2^31 - 1, else "" and *out.
template <typename ConvInput>  // ConvEncodeBase::Input (a protected type, named by deduction)
std::string conv_shape(const ConvGeometry& g, const ConvInput& in, cuda::ConvShape* out) {
  const int64_t span_h = (g.kh - 1) * g.dh + 1, span_w = (g.kw - 1) * g.dw + 1;
  for (int64_t v : {in.Cin, in.H, in.W, in.D, in.geo.Ho * in.geo.Wo, in.geo.Ho * g.sh + in.geo.top + span_h,
                    in.geo.Wo * g.sw + in.geo.left + span_w}) {
    if (v > kInt32Max) {
      return "input 'X' shape " + in.X.shape_str() + " with this geometry needs indices past " +
             std::to_string(kInt32Max) + ", beyond the CUDA kernels' 32-bit geometry";
    }
  }
  cuda::ConvShape& s = *out;
  s.B = in.B;
  s.Cin = int32_t(in.Cin), s.H = int32_t(in.H), s.W = int32_t(in.W);
  s.Ho = int32_t(in.geo.Ho), s.Wo = int32_t(in.geo.Wo);
  s.kh = int32_t(g.kh), s.kw = int32_t(g.kw), s.sh = int32_t(g.sh), s.sw = int32_t(g.sw);
  s.dh = int32_t(g.dh), s.dw = int32_t(g.dw), s.top = int32_t(in.geo.top), s.left = int32_t(in.geo.left);
  return "";
}

}  // namespace

// ---- HalutEncodeTree --------------------------------------------------------------------------------------------

CudaEncodeTreeKernel::CudaEncodeTreeKernel(const OrtApi* api, const OrtKernelInfo* info) : CudaKernel(api, info) {
  if (!packed_) need_constants("'split_dims' and 'thresholds'");
  dims_ = upload(packed_->split_dims, "'split_dims'");
  thresholds_ = upload(packed_->thresholds, "'thresholds'");
}

void CudaEncodeTreeKernel::Compute(OrtKernelContext* ctx) {
  const TensorView X = input(ctx, 0);
  const cpu::PackedTree& tree = *packed_;
  const int64_t D = check_x(X, tree);
  uint8_t* codes = static_cast<uint8_t*>(row_output(ctx, 0, X, tree.C));
  const int64_t N = X.rows();
  if (N == 0) return;
  const cuda::TreeWeights w{dims_.as<int32_t>(), thresholds_.as<float>(), int32_t(tree.C)};
  cuda_check(cuda::encode_tree(dev_, X.as<float>(), N, D, w, codes, stream(ctx)), "the encode_tree launch");
}

// ---- HalutEncodePQ ----------------------------------------------------------------------------------------------

CudaEncodePqKernel::CudaEncodePqKernel(const OrtApi* api, const OrtKernelInfo* info) : CudaKernel(api, info) {
  if (!packed_) need_constants("'vectors' and 'biases'");
  vectors_t_ = upload(packed_->vectors_t, "'vectors'");
  biases_ = upload(packed_->biases, "'biases'");
  bounds_ = upload(packed_->bounds, "the slice bounds");
  slices_of_4_ = cuda::slices_of_4(packed_->bounds.data(), int32_t(packed_->C));
}

void CudaEncodePqKernel::Compute(OrtKernelContext* ctx) {
  const TensorView X = input(ctx, 0);
  const cpu::PackedPq& pq = *packed_;
  const int64_t D = check_x(X, pq);
  uint8_t* codes = static_cast<uint8_t*>(row_output(ctx, 0, X, pq.C));
  const int64_t N = X.rows();
  if (N == 0) return;
  const cuda::PqWeights w{vectors_t_.as<float>(), biases_.as<float>(), bounds_.as<int64_t>(), int32_t(pq.C), pq.D,
                          slices_of_4_};
  cuda_check(cuda::encode_pq(dev_, X.as<float>(), N, w, codes, stream(ctx)), "the encode_pq launch");
}

// ---- HalutLookup ------------------------------------------------------------------------------------------------

template <typename Base>
DeviceLut CudaKernel<Base>::upload_lut(const OrtKernelInfo* info) {
  if (!this->packed_) need_constants("'lut', 'scale' and 'offset'");
  if (!this->isa_->lut_code_major) {
    // The base packed for this CPU's lookup; the CUDA kernels read the scalar path's code-major layout.
    this->isa_ = &cpu::scalar_kernels();
    this->packed_ = this->pack_lut_weights(*this->constant_input(info, 1), *this->constant_input(info, 2),
                                           *this->constant_input(info, 3));
  }
  const cpu::PackedLut& packed = *this->packed_;
  if (packed.M > kInt32Max / 16 || packed.Cpad > kInt32Max / 16) {
    this->invalid("input 'lut' shape [" + std::to_string(packed.M) + ", " + std::to_string(packed.C) +
                  ", 16] is too large for the CUDA kernels' 32-bit table indices");
  }
  DeviceLut out;
  out.lut = upload(biased_lut(packed.lut), "'lut'");
  out.scale = upload(packed.scale, "'scale'");
  out.offset = upload(packed.offset, "'offset'");
  out.weights = {out.lut.as<int8_t>(), out.scale.as<float>(), out.offset.as<float>(), int32_t(packed.M),
                 int32_t(packed.C), int32_t(packed.Mpad)};
  return out;
}

CudaLookupKernel::CudaLookupKernel(const OrtApi* api, const OrtKernelInfo* info)
    : CudaKernel(api, info), lut_(upload_lut(info)) {}

void CudaLookupKernel::Compute(OrtKernelContext* ctx) {
  const TensorView codes = input(ctx, 0);
  expect_type(codes, "codes", ort::kUint8);
  expect_min_rank(codes, "codes", 1);
  const cpu::PackedLut& lut = *packed_;
  expect_dim(codes, "codes", codes.rank() - 1, lut.C, "C, lut's dim 1");
  float* Y = static_cast<float*>(row_output(ctx, 0, codes, lut.M));
  const int64_t N = codes.rows();
  if (N == 0 || lut.M == 0) return;
  cuda_check(cuda::lookup(dev_, codes.as<uint8_t>(), N, lut_.weights, Y, stream(ctx)), "the lookup launch");
}

// ---- HalutEncodeTreeConv ----------------------------------------------------------------------------------------

CudaEncodeTreeConvKernel::CudaEncodeTreeConvKernel(const OrtApi* api, const OrtKernelInfo* info)
    : CudaKernel(api, info) {
  if (!packed_) need_constants("'split_dims' and 'thresholds'");
  // The CPU packing renumbers split dims into the distinct elements it gathers; the CUDA kernel reads patch
  // elements straight from X, so it takes the patch indices back.
  std::vector<int32_t> dims(packed_->tree.split_dims.size());
  for (size_t i = 0; i < dims.size(); ++i) dims[i] = int32_t(packed_->elements[packed_->tree.split_dims[i]]);
  dims_ = upload(dims, "'split_dims'");
  thresholds_ = upload(packed_->tree.thresholds, "'thresholds'");
}

void CudaEncodeTreeConvKernel::Compute(OrtKernelContext* ctx) {
  const Input in = conv_input(ctx);
  const Compact& packed = *packed_;
  check_patches(in, packed);
  const int64_t C = packed.tree.C;
  cuda::ConvShape s;
  if (const std::string problem = conv_shape(geometry_, in, &s); !problem.empty()) invalid(problem);
  uint8_t* codes = static_cast<uint8_t*>(output(ctx, 0, {in.B, in.geo.Ho, in.geo.Wo, C}));
  if (in.B * in.geo.Ho * in.geo.Wo == 0) return;
  const cuda::TreeWeights w{dims_.as<int32_t>(), thresholds_.as<float>(), int32_t(C)};
  cuda_check(cuda::encode_tree_conv(dev_, in.X.as<float>(), s, w, codes, stream(ctx)),
             "the encode_tree_conv launch");
}

// ---- HalutEncodePQConv ------------------------------------------------------------------------------------------

CudaEncodePqConvKernel::CudaEncodePqConvKernel(const OrtApi* api, const OrtKernelInfo* info)
    : CudaKernel(api, info) {
  if (!packed_) need_constants("'vectors' and 'biases'");
  vectors_t_ = upload(packed_->vectors_t, "'vectors'");
  biases_ = upload(packed_->biases, "'biases'");
  bounds_ = upload(packed_->bounds, "the slice bounds");
}

void CudaEncodePqConvKernel::Compute(OrtKernelContext* ctx) {
  const Input in = conv_input(ctx);
  const cpu::PackedPq& pq = *packed_;
  check_patches(in, pq);
  cuda::ConvShape s;
  if (const std::string problem = conv_shape(geometry_, in, &s); !problem.empty()) invalid(problem);
  uint8_t* codes = static_cast<uint8_t*>(output(ctx, 0, {in.B, in.geo.Ho, in.geo.Wo, pq.C}));
  if (in.B * in.geo.Ho * in.geo.Wo == 0) return;
  const cuda::PqWeights w{vectors_t_.as<float>(), biases_.as<float>(), bounds_.as<int64_t>(), int32_t(pq.C), pq.D};
  cuda_check(cuda::encode_pq_conv(dev_, in.X.as<float>(), s, w, codes, stream(ctx)), "the encode_pq_conv launch");
}

// ---- HalutLookupConv --------------------------------------------------------------------------------------------

CudaLookupConvKernel::CudaLookupConvKernel(const OrtApi* api, const OrtKernelInfo* info)
    : CudaKernel(api, info), lut_(upload_lut(info)) {}

void CudaLookupConvKernel::Compute(OrtKernelContext* ctx) {
  const TensorView codes = input(ctx, 0);
  expect_type(codes, "codes", ort::kUint8);
  expect_rank(codes, "codes", 4);
  const cpu::PackedLut& lut = *packed_;
  expect_dim(codes, "codes", 3, lut.C, "C, lut's dim 1");
  const int64_t B = codes.shape[0], Ho = codes.shape[1], Wo = codes.shape[2], M = lut.M;
  float* Y = static_cast<float*>(output(ctx, 0, {B, M, Ho, Wo}));
  const int64_t P = Ho * Wo;
  if (B * P == 0 || M == 0) return;
  cuda_check(cuda::lookup_nchw(dev_, codes.as<uint8_t>(), B, P, lut_.weights, Y, stream(ctx)),
             "the lookup_conv launch");
}

// ---- records ----------------------------------------------------------------------------------------------------

namespace {

template <typename Kernel>
struct CudaOpDef : OpDef<Kernel> {
  CudaOpDef() {
    this->GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return "CUDAExecutionProvider"; };
    // X / codes in device memory; the weights in host memory (OrtMemTypeCPUInput = -2), read once at creation.
    this->GetInputMemoryType = [](const OrtCustomOp*, size_t index) { return index == 0 ? 0 : -2; };
  }
};

const CudaOpDef<CudaEncodeTreeKernel> kCudaEncodeTree;
const CudaOpDef<CudaEncodePqKernel> kCudaEncodePq;
const CudaOpDef<CudaLookupKernel> kCudaLookup;
const CudaOpDef<CudaEncodeTreeConvKernel> kCudaEncodeTreeConv;
const CudaOpDef<CudaEncodePqConvKernel> kCudaEncodePqConv;
const CudaOpDef<CudaLookupConvKernel> kCudaLookupConv;

}  // namespace

const OrtCustomOp* const* cuda_op_records(size_t* count) {
  static const OrtCustomOp* const records[] = {&kCudaEncodeTree,     &kCudaEncodePq,     &kCudaLookup,
                                               &kCudaEncodeTreeConv, &kCudaEncodePqConv, &kCudaLookupConv};
  *count = sizeof(records) / sizeof(records[0]);
  return records;
}

}  // namespace halut
