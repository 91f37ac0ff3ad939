#include "kernel_base.h"

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "../cpu/dispatch.h"

namespace halut {

int64_t TensorView::rows() const {
  int64_t n = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
  return n;
}

std::string TensorView::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

const char* type_name(int type) {
  switch (type) {
    case ort::kFloat: return "float32";
    case ort::kUint8: return "uint8";
    case ort::kInt8: return "int8";
    case ort::kUint16: return "uint16";
    case ort::kInt16: return "int16";
    case ort::kInt32: return "int32";
    case ort::kInt64: return "int64";
    case ort::kString: return "string";
    case ort::kBool: return "bool";
    case ort::kFloat16: return "float16";
    case ort::kDouble: return "float64";
    case ort::kUint32: return "uint32";
    case ort::kUint64: return "uint64";
    case ort::kBfloat16: return "bfloat16";
    default: return "an unsupported element type";
  }
}

KernelBase::KernelBase(const OrtApi* api, const OrtKernelInfo* info, const char* op) : api_(api), op_(op) {
  size_t size = 0;
  check(api_.KernelInfo_GetNodeName(info, nullptr, &size));
  std::string name(size, '\0');
  if (size > 0) {
    check(api_.KernelInfo_GetNodeName(info, name.data(), &size));
    name.resize(size > 0 ? size - 1 : 0);  // size counts the NUL
  }
  node_ = name;
  // Read at kernel creation, so a test or benchmark can force a path per session.
  std::string error;
  isa_ = cpu::select_kernels(std::getenv("HALUT_ONNX_ISA"), &error);
  if (isa_ == nullptr) invalid(error);
}

void KernelBase::invalid(const std::string& problem) const {
  throw InvalidArgument(op_ + " node '" + node_ + "': " + problem);
}


TensorView KernelBase::view(const OrtValue* value) const {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api_.GetTensorTypeAndShape(value, &info));
  TensorView t;
  OrtStatus* status = api_.GetTensorElementType(info, &t.type);
  size_t rank = 0;
  if (status == nullptr) status = api_.GetDimensionsCount(info, &rank);
  if (status == nullptr) {
    t.shape.resize(rank);
    status = api_.GetDimensions(info, t.shape.data(), rank);
  }
  api_.ReleaseTensorTypeAndShapeInfo(info);
  check(status);
  void* data = nullptr;
  // Inputs are only read; GetTensorData (the const accessor) needs API 23.
  check(api_.GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  t.data = data;
  return t;
}

TensorView KernelBase::input(const OrtKernelContext* ctx, size_t index) const {
  const OrtValue* value = nullptr;
  check(api_.KernelContext_GetInput(ctx, index, &value));
  if (value == nullptr) invalid("input " + std::to_string(index) + " is missing");
  return view(value);
}

std::optional<TensorView> KernelBase::constant_input(const OrtKernelInfo* info, size_t index) const {
  int is_constant = 0;
  const OrtValue* value = nullptr;
  check(api_.KernelInfoGetConstantInput_tensor(info, index, &is_constant, &value));
  if (!is_constant || value == nullptr) return std::nullopt;
  return view(value);
}

void* KernelBase::output(OrtKernelContext* ctx, size_t index, const std::vector<int64_t>& shape) const {
  OrtValue* value = nullptr;
  check(api_.KernelContext_GetOutput(ctx, index, shape.data(), shape.size(), &value));
  void* data = nullptr;
  check(api_.GetTensorMutableData(value, &data));
  return data;
}

void KernelBase::expect_type(const TensorView& t, const char* name, int type) const {
  if (t.type != type) {
    invalid(std::string("input '") + name + "' must be " + type_name(type) + ", found " + type_name(t.type));
  }
}

void KernelBase::expect_rank(const TensorView& t, const char* name, size_t rank) const {
  if (t.rank() != rank) {
    invalid(std::string("input '") + name + "' must have rank " + std::to_string(rank) + ", found rank " +
            std::to_string(t.rank()) + " (shape " + t.shape_str() + ")");
  }
}

void KernelBase::expect_min_rank(const TensorView& t, const char* name, size_t rank) const {
  if (t.rank() < rank) {
    invalid(std::string("input '") + name + "' must have rank >= " + std::to_string(rank) + ", found rank " +
            std::to_string(t.rank()));
  }
}

void KernelBase::expect_dim(const TensorView& t, const char* name, size_t axis, int64_t expected,
                            const char* what) const {
  if (t.shape[axis] != expected) {
    invalid(std::string("input '") + name + "' dim " + std::to_string(axis) + " (" + what + ") must be " +
            std::to_string(expected) + ", found " + std::to_string(t.shape[axis]) + " (shape " + t.shape_str() + ")");
  }
}

int64_t rows_per_task(int64_t cost_per_row) {
  constexpr int64_t kMinTaskCycles = 100000;
  const int64_t g = cpu::kRowGranularity;
  const int64_t rows = kMinTaskCycles / std::max<int64_t>(cost_per_row, 1);
  return std::max<int64_t>(g, (rows + g - 1) / g * g);
}

void* thread_scratch(size_t bytes) {
  struct Buffer {
    std::unique_ptr<unsigned char[]> storage;
    size_t capacity = 0;
  };
  thread_local Buffer buffer;
  if (buffer.capacity < bytes) {
    buffer.storage.reset(new unsigned char[bytes + 64]);
    buffer.capacity = bytes;
  }
  auto address = reinterpret_cast<uintptr_t>(buffer.storage.get());
  return reinterpret_cast<void*>((address + 63) & ~uintptr_t{63});
}

}  // namespace halut
