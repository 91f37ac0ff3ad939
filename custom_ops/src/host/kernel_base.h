// The onnxruntime-facing half shared by the op kernels: reading inputs, validating them with messages that name the
// node, allocating outputs and running row blocks on onnxruntime's intra-op thread pool. Errors travel as C++
// exceptions inside the library and become an OrtStatus at the C boundary (register.cc); none crosses it.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cpu/kernels.h"
#include "../cpu/pack.h"
#include "ort_abi.h"

namespace halut {

// An onnxruntime status to hand back unchanged.
struct StatusError {
  OrtStatus* status;
};

// A problem with the op's inputs, reported as INVALID_ARGUMENT.
class InvalidArgument : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TensorView {
  int type = 0;
  std::vector<int64_t> shape;
  const void* data = nullptr;

  size_t rank() const { return shape.size(); }
  // Product of all dims but the last (the rows of a [..., D] tensor).
  int64_t rows() const;
  std::string shape_str() const;
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

const char* type_name(int type);

class KernelBase {
 public:
  KernelBase(const OrtApi* api, const OrtKernelInfo* info, const char* op);
  const ort::Api& api() const { return api_; }

 protected:
  void check(OrtStatus* status) const {
    if (status != nullptr) throw StatusError{status};
  }
  [[noreturn]] void invalid(const std::string& problem) const;

  TensorView view(const OrtValue* value) const;
  TensorView input(const OrtKernelContext* ctx, size_t index) const;
  // The input's value when it is a constant initializer, known at kernel creation.
  std::optional<TensorView> constant_input(const OrtKernelInfo* info, size_t index) const;
  void* output(OrtKernelContext* ctx, size_t index, const std::vector<int64_t>& shape) const;
  // The row ops' output: `rows`' leading dims with the last one replaced by `last` ([..., D] -> [..., last]).
  void* row_output(OrtKernelContext* ctx, size_t index, const TensorView& rows, int64_t last) const;

  void expect_type(const TensorView& t, const char* name, int type) const;
  void expect_rank(const TensorView& t, const char* name, size_t rank) const;
  void expect_min_rank(const TensorView& t, const char* name, size_t rank) const;
  void expect_dim(const TensorView& t, const char* name, size_t axis, int64_t expected, const char* what) const;

  // Weight validation and packing shared by the row ops, the conv ops and their CUDA twins.
  cpu::PackedLut pack_lut_weights(const TensorView& lut, const TensorView& scale, const TensorView& offset) const;
  cpu::PackedPq pack_pq_weights(const TensorView& vectors, const TensorView& biases) const;
  // split_dims int64 [C, 4] with entries in 0 .. INT32_MAX, thresholds float [C, 15]; `index_kind` says what a split
  // dim indexes ("column", "patch") in the message. Returns C.
  int64_t check_tree_weights(const TensorView& split_dims, const TensorView& thresholds, const char* index_kind) const;

  // Calls task(i) for i in 0 .. tasks-1 on onnxruntime's intra-op pool. task must not throw.
  template <typename Task>
  void parallel_for(OrtKernelContext* ctx, int64_t tasks, Task& task) const {
    if (tasks <= 0) return;
    if (tasks == 1) {
      task(0);
      return;
    }
    auto trampoline = [](void* user, size_t i) { (*static_cast<Task*>(user))(static_cast<int64_t>(i)); };
    check(api_.KernelContext_ParallelFor(ctx, trampoline, static_cast<size_t>(tasks), 0, &task));
  }

  ort::Api api_;
  std::string op_;
  std::string node_;
  const cpu::IsaKernels* isa_ = nullptr;
};

// Rows per parallel task: a multiple of cpu::kRowGranularity holding at least ~100k cycles of work (cost_per_row
// is a rough cycle count), so that waking a pool thread pays off; small inputs stay on the calling thread.
int64_t rows_per_task(int64_t cost_per_row);

// A 64-byte aligned scratch buffer per thread (the lookup's transposed codes), grown on demand.
void* thread_scratch(size_t bytes);

}  // namespace halut
