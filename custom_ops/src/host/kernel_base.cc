#include "kernel_base.h"

#include <limits>

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

void* KernelBase::row_output(OrtKernelContext* ctx, size_t index, const TensorView& rows, int64_t last) const {
  std::vector<int64_t> shape = rows.shape;
  shape.back() = last;
  return output(ctx, index, shape);
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

cpu::PackedLut KernelBase::pack_lut_weights(const TensorView& lut, const TensorView& scale, const TensorView& offset) const {
  expect_type(lut, "lut", ort::kInt8);
  expect_rank(lut, "lut", 3);
  expect_dim(lut, "lut", 2, cpu::kCodes, "codes per codebook");
  const int64_t M = lut.shape[0], C = lut.shape[1];
  if (C < 1) invalid("input 'lut' needs at least one codebook, found shape " + lut.shape_str());
  expect_type(scale, "scale", ort::kFloat);
  expect_rank(scale, "scale", 1);
  expect_dim(scale, "scale", 0, M, "M, lut's dim 0");
  expect_type(offset, "offset", ort::kFloat);
  expect_rank(offset, "offset", 1);
  expect_dim(offset, "offset", 0, M, "M, lut's dim 0");
  return cpu::pack_lut(lut.as<int8_t>(), scale.as<float>(), offset.as<float>(), M, C, isa_->lut_code_major);
}

cpu::PackedPq KernelBase::pack_pq_weights(const TensorView& vectors, const TensorView& biases) const {
  expect_type(vectors, "vectors", ort::kFloat);
  expect_rank(vectors, "vectors", 2);
  expect_dim(vectors, "vectors", 0, cpu::kCodes, "prototypes");
  const int64_t D = vectors.shape[1];
  expect_type(biases, "biases", ort::kFloat);
  expect_rank(biases, "biases", 2);
  expect_dim(biases, "biases", 1, cpu::kCodes, "prototypes");
  const int64_t C = biases.shape[0];
  if (C < 1 || C > D) {
    invalid("input 'biases' has C = " + std::to_string(C) + " codebooks for D = " + std::to_string(D) +
            " columns of 'vectors' (expected 1 <= C <= D)");
  }
  return cpu::pack_pq(vectors.as<float>(), biases.as<float>(), C, D);
}

int64_t KernelBase::check_tree_weights(const TensorView& split_dims, const TensorView& thresholds,
                                       const char* index_kind) const {
  expect_type(split_dims, "split_dims", ort::kInt64);
  expect_rank(split_dims, "split_dims", 2);
  expect_dim(split_dims, "split_dims", 1, cpu::kTreeDepth, "tree depth");
  const int64_t C = split_dims.shape[0];
  if (C < 1) invalid("input 'split_dims' needs at least one codebook, found shape " + split_dims.shape_str());
  expect_type(thresholds, "thresholds", ort::kFloat);
  expect_rank(thresholds, "thresholds", 2);
  expect_dim(thresholds, "thresholds", 0, C, "C, split_dims' dim 0");
  expect_dim(thresholds, "thresholds", 1, cpu::kTreeNodes, "thresholds per tree");
  const int64_t* dims = split_dims.as<int64_t>();
  for (int64_t i = 0; i < C * cpu::kTreeDepth; ++i) {
    if (dims[i] < 0 || dims[i] > std::numeric_limits<int32_t>::max()) {
      invalid("input 'split_dims' has " + std::to_string(dims[i]) + " at [" + std::to_string(i / cpu::kTreeDepth) +
              ", " + std::to_string(i % cpu::kTreeDepth) + "], expected a " + index_kind + " index in 0 .. D-1");
    }
  }
  return C;
}

}  // namespace halut
