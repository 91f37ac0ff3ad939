// The ops' kernels for onnxruntime's CUDA execution provider. Each derives from its CPU kernel so that validation
// (and its messages) and packing are the same code: the CPU constructor validates and packs the constant weights,
// this one re-packs them in the layouts the CUDA kernels read (src/cuda/halut_cuda.h) and uploads them once. X /
// codes and the outputs are device memory; the weights arrive in host memory (their records declare them
// OrtMemTypeCPUInput). Weights that are not initializers are rejected at session creation (docs/cuda.md).
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "../cuda/halut_cuda.h"
#include "conv.h"
#include "encode_pq.h"
#include "encode_tree.h"
#include "lookup.h"

namespace halut {

// A device allocation owned by one kernel; freed when onnxruntime destroys the kernel (session teardown).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_) { other.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  ~DeviceBuffer();
  void reset(void* ptr);
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// Constructed before the CPU base reads the constant weights: fails cleanly, instead of reading device memory on
// the host, should onnxruntime ever hand them over on the GPU despite the records' OrtMemTypeCPUInput.
class HostWeightsGuard {
 protected:
  HostWeightsGuard(const OrtApi* api, const OrtKernelInfo* info, const char* op);
};

// A lookup's tables on the device, uploaded once at kernel creation.
struct DeviceLut {
  DeviceBuffer lut, scale, offset;
  cuda::LutWeights weights;  // pointers into the buffers above, and the shape
};

// What every CUDA kernel adds to its CPU base: the device it uploaded to, uploads, the stream, error statuses.
template <typename Base>
class CudaKernel : private HostWeightsGuard, public Base {
 public:
  CudaKernel(const OrtApi* api, const OrtKernelInfo* info);

 protected:
  // Throws an EP_FAIL status naming the node, the call and the CUDA error.
  void cuda_check(cudaError_t err, const char* what) const;
  // cudaMalloc + a synchronous cudaMemcpy, at kernel creation only.
  template <typename T>
  DeviceBuffer upload(const std::vector<T>& host, const char* what) const;
  // The stream onnxruntime runs this node on (slot 193); fails when it belongs to another device than the weights.
  cudaStream_t stream(OrtKernelContext* ctx) const;
  [[noreturn]] void need_constants(const char* inputs) const;
  // The lookups (Base = LookupKernel or LookupConvKernel): their packed constant tables, in the code-major layout
  // the CUDA kernels read, uploaded.
  DeviceLut upload_lut(const OrtKernelInfo* info);

  cuda::DeviceInfo dev_;
};

class CudaEncodeTreeKernel : public CudaKernel<EncodeTreeKernel> {
 public:
  CudaEncodeTreeKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 private:
  DeviceBuffer dims_, thresholds_;
};

class CudaEncodePqKernel : public CudaKernel<EncodePqKernel> {
 public:
  CudaEncodePqKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 private:
  DeviceBuffer vectors_t_, biases_, bounds_;
  bool slices_of_4_ = false;  // of the constant bounds, decided once
};

class CudaLookupKernel : public CudaKernel<LookupKernel> {
 public:
  CudaLookupKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 private:
  DeviceLut lut_;
};

class CudaEncodeTreeConvKernel : public CudaKernel<EncodeTreeConvKernel> {
 public:
  CudaEncodeTreeConvKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 private:
  DeviceBuffer dims_, thresholds_;  // dims as patch indices (the CPU packing's compact columns mapped back)
};

class CudaEncodePqConvKernel : public CudaKernel<EncodePqConvKernel> {
 public:
  CudaEncodePqConvKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 private:
  DeviceBuffer vectors_t_, biases_, bounds_;
};

class CudaLookupConvKernel : public CudaKernel<LookupConvKernel> {
 public:
  CudaLookupConvKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 private:
  DeviceLut lut_;
};

// The op records of the CUDA kernels, registered beside the CPU ones under the same names.
const OrtCustomOp* const* cuda_op_records(size_t* count);

}  // namespace halut
