#include "encode_tree.h"

#include <algorithm>
#include <limits>

namespace halut {

EncodeTreeKernel::EncodeTreeKernel(const OrtApi* api, const OrtKernelInfo* info) : KernelBase(api, info, kName) {
  auto split_dims = constant_input(info, 1), thresholds = constant_input(info, 2);
  if (split_dims && thresholds) packed_ = pack(*split_dims, *thresholds);
}

cpu::PackedTree EncodeTreeKernel::pack(const TensorView& split_dims, const TensorView& thresholds) const {
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
              ", " + std::to_string(i % cpu::kTreeDepth) + "], expected a column index in 0 .. D-1");
    }
  }
  return cpu::pack_tree(dims, thresholds.as<float>(), C);
}

void EncodeTreeKernel::Compute(OrtKernelContext* ctx) {
  const TensorView X = input(ctx, 0);
  expect_type(X, "X", ort::kFloat);
  expect_min_rank(X, "X", 1);
  std::optional<cpu::PackedTree> per_run;
  if (!packed_) per_run = pack(input(ctx, 1), input(ctx, 2));
  const cpu::PackedTree& tree = packed_ ? *packed_ : *per_run;
  const int64_t D = X.shape.back();
  if (tree.C > D) {
    invalid("C = " + std::to_string(tree.C) + " codebooks exceed X's D = " + std::to_string(D) +
            " columns (expected C <= D)");
  }
  if (tree.max_split >= D) {
    invalid("input 'split_dims' has " + std::to_string(tree.max_split) + ", outside X's columns 0 .. " +
            std::to_string(D - 1) + " (X shape " + X.shape_str() + ")");
  }

  std::vector<int64_t> shape = X.shape;
  shape.back() = tree.C;
  uint8_t* codes = static_cast<uint8_t*>(output(ctx, 0, shape));
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
