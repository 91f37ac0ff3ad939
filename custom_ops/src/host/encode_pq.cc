#include "encode_pq.h"

#include <algorithm>

namespace halut {

EncodePqKernel::EncodePqKernel(const OrtApi* api, const OrtKernelInfo* info) : KernelBase(api, info, kName) {
  auto vectors = constant_input(info, 1), biases = constant_input(info, 2);
  if (vectors && biases) packed_ = pack_pq_weights(*vectors, *biases);
}

int64_t EncodePqKernel::check_x(const TensorView& X, const cpu::PackedPq& pq) const {
  expect_type(X, "X", ort::kFloat);
  expect_min_rank(X, "X", 1);
  const int64_t D = X.shape.back();
  if (D != pq.D) {
    invalid("input 'X' has D = " + std::to_string(D) + " columns but 'vectors' has " + std::to_string(pq.D) +
            " (expected X's last dim " + std::to_string(pq.D) + ", found " + std::to_string(D) + ")");
  }
  return D;
}

void EncodePqKernel::Compute(OrtKernelContext* ctx) {
  const TensorView X = input(ctx, 0);
  std::optional<cpu::PackedPq> per_run;
  if (!packed_) per_run = pack_pq_weights(input(ctx, 1), input(ctx, 2));
  const cpu::PackedPq& pq = packed_ ? *packed_ : *per_run;
  const int64_t D = check_x(X, pq);

  uint8_t* codes = static_cast<uint8_t*>(row_output(ctx, 0, X, pq.C));
  const int64_t N = X.rows();
  if (N == 0) return;
  const cpu::PqParams params = pq.params();
  const float* x = X.as<float>();
  const cpu::IsaKernels* isa = isa_;
  const int64_t task_rows = rows_per_task(2 * D + 16 * pq.C);  // 16 D multiply-adds, 16 lanes; an argmin per codebook
  auto task = [&](int64_t t) noexcept {
    const int64_t r0 = t * task_rows;
    isa->encode_pq(x + r0 * D, std::min(task_rows, N - r0), params, codes + r0 * pq.C);
  };
  parallel_for(ctx, (N + task_rows - 1) / task_rows, task);
}

}  // namespace halut
