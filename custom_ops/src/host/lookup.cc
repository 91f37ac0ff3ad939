#include "lookup.h"

#include <algorithm>
#include <atomic>

namespace halut {

// Outputs at least this large bypass the cache (measured on Zen 4: a win from a few MB, where Y no longer fits the
// per-core L2 and is written back to memory before the next op reads it anyway).
constexpr int64_t kStreamOutputBytes = int64_t{4} << 20;

LookupKernel::LookupKernel(const OrtApi* api, const OrtKernelInfo* info) : KernelBase(api, info, kName) {
  auto lut = constant_input(info, 1), scale = constant_input(info, 2), offset = constant_input(info, 3);
  if (lut && scale && offset) packed_ = pack_lut_weights(*lut, *scale, *offset);
}

void LookupKernel::Compute(OrtKernelContext* ctx) {
  const TensorView codes = input(ctx, 0);
  expect_type(codes, "codes", ort::kUint8);
  expect_min_rank(codes, "codes", 1);
  std::optional<cpu::PackedLut> per_run;
  if (!packed_) per_run = pack_lut_weights(input(ctx, 1), input(ctx, 2), input(ctx, 3));
  const cpu::PackedLut& lut = packed_ ? *packed_ : *per_run;
  expect_dim(codes, "codes", codes.rank() - 1, lut.C, "C, lut's dim 1");

  float* Y = static_cast<float*>(row_output(ctx, 0, codes, lut.M));
  const int64_t N = codes.rows();
  if (N == 0 || lut.M == 0) return;

  cpu::LutParams params = lut.params();
  params.stream_output = N * lut.M * static_cast<int64_t>(sizeof(float)) >= kStreamOutputBytes;
  const uint8_t* code_data = codes.as<uint8_t>();
  const size_t scratch_bytes = cpu::lookup_scratch_bytes(lut.Cpad, lut.Mpad);
  const cpu::IsaKernels* isa = isa_;
  std::atomic<bool> out_of_memory{false};
  // One (vpermb, vpdpbusd) pair per 64 lookups plus the per-output epilogue, per row.
  const int64_t task_rows = rows_per_task(lut.Mpad * lut.Cpad / 64 + lut.Mpad / 4);
  auto task = [&](int64_t t) noexcept {
    void* scratch = nullptr;
    try {
      scratch = thread_scratch(scratch_bytes);
    } catch (...) {
      out_of_memory = true;
      return;
    }
    const int64_t end = std::min(N, (t + 1) * task_rows);
    for (int64_t r0 = t * task_rows; r0 < end; r0 += cpu::kLookupMaxRows) {
      const int64_t rows = std::min(cpu::kLookupMaxRows, end - r0);
      isa->lookup(code_data + r0 * lut.C, rows, params, Y + r0 * lut.M, scratch);
    }
  };
  parallel_for(ctx, (N + task_rows - 1) / task_rows, task);
  if (out_of_memory) throw std::bad_alloc();
}

}  // namespace halut
