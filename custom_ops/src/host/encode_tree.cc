#include "encode_tree.h"

#include <algorithm>
#include <limits>

namespace halut {

EncodeTreeKernel::EncodeTreeKernel(const OrtApi* api, const OrtKernelInfo* info) : KernelBase(api, info, kName) {
  auto split_dims = constant_input(info, 1), thresholds = constant_input(info, 2);
  if (split_dims && thresholds) packed_ = pack(*split_dims, *thresholds);
}

cpu::PackedTree EncodeTreeKernel::pack(const TensorView& split_dims, const TensorView& thresholds) const {
  const int64_t C = check_tree_weights(split_dims, thresholds, "column");
  return cpu::pack_tree(split_dims.as<int64_t>(), thresholds.as<float>(), C);
}

int64_t EncodeTreeKernel::check_x(const TensorView& X, const cpu::PackedTree& tree) const {
  expect_type(X, "X", ort::kFloat);
  expect_min_rank(X, "X", 1);
  const int64_t D = X.shape.back();
  if (tree.C > D) {
    invalid("C = " + std::to_string(tree.C) + " codebooks exceed X's D = " + std::to_string(D) +
            " columns (expected C <= D)");
  }
  if (tree.max_split >= D) {
    invalid("input 'split_dims' has " + std::to_string(tree.max_split) + ", outside X's columns 0 .. " +
            std::to_string(D - 1) + " (X shape " + X.shape_str() + ")");
  }
  return D;
}

void EncodeTreeKernel::Compute(OrtKernelContext* ctx) {
  const TensorView X = input(ctx, 0);
  std::optional<cpu::PackedTree> per_run;
  if (!packed_) per_run = pack(input(ctx, 1), input(ctx, 2));
  const cpu::PackedTree& tree = packed_ ? *packed_ : *per_run;
  const int64_t D = check_x(X, tree);

  uint8_t* codes = static_cast<uint8_t*>(row_output(ctx, 0, X, tree.C));
  const int64_t N = X.rows();
  if (N == 0) return;
  const cpu::TreeParams params = tree.params();
  const float* x = X.as<float>();
  const cpu::IsaKernels* isa = isa_;
  const int64_t task_rows = rows_per_task(8 * tree.C);  // 4 gathers and compares per codebook and row
  auto task = [&](int64_t t) noexcept {
    const int64_t r0 = t * task_rows;
    isa->encode_tree(x + r0 * D, std::min(task_rows, N - r0), D, params, codes + r0 * tree.C);
  };
  parallel_for(ctx, (N + task_rows - 1) / task_rows, task);
}

}  // namespace halut
