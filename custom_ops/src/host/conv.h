// The Conv forms of the ops (docs/ops.md, "Conv ops"): HalutEncodeTreeConv and HalutEncodePQConv read the patch
// elements they need straight from an NCHW activation (gathered per block of output positions into a small
// buffer, never a whole im2col matrix) and run the row kernels on them; HalutLookupConv runs the row lookup on
// blocks of output positions and writes them into the NCHW output.
#pragma once

#include <optional>
#include <vector>

#include "../cpu/conv_kernels.h"
#include "../cpu/pack.h"
#include "kernel_base.h"

namespace halut {

// Conv geometry attributes, with pads resolved per run (auto_pad depends on H and W).
struct ConvGeometry {
  enum class AutoPad { kNotSet, kSameUpper, kSameLower, kValid };
  int64_t kh = 0, kw = 0, sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t pads[4] = {0, 0, 0, 0};  // top, left, bottom, right
  AutoPad auto_pad = AutoPad::kNotSet;

  struct Resolved {
    int64_t top, left, Ho, Wo;
  };
  Resolved resolve(int64_t H, int64_t W) const;
};

// Where each needed patch element sits relative to a patch's top-left input position.
struct PatchTable {
  std::vector<int64_t> offset;  // ci * H * W + dy * W + dx
  std::vector<int32_t> channel, dy, dx;
};

class ConvEncodeBase : public KernelBase {
 protected:
  ConvEncodeBase(const OrtApi* api, const OrtKernelInfo* info, const char* op);

  struct Input {
    TensorView X;
    int64_t B, Cin, H, W, D;
    ConvGeometry::Resolved geo;
  };
  Input conv_input(const OrtKernelContext* ctx) const;
  // Gathers the patch elements `elements` (patch indices, ascending) of the rows n0 .. n0+rows-1 into buf[rows][U].
  PatchTable patch_table(const Input& in, const std::vector<int64_t>& elements) const;
  void gather(const Input& in, const PatchTable& table, int64_t n0, int64_t rows, float* buf) const;
  // The same elements stored element-major, cols[u * ld + r] (consecutive positions of a row are contiguous reads
  // of X for stride 1).
  void gather_cols(const Input& in, const PatchTable& table, int64_t n0, int64_t rows, int64_t ld,
                   float* cols) const;
  // Runs fn(n0, rows, buf) over blocks of output rows on the intra-op pool; buf holds rows x U floats.
  template <typename Fn>
  void for_row_blocks(OrtKernelContext* ctx, int64_t N, int64_t U, int64_t cost_per_row, Fn& fn) const;

  ConvGeometry geometry_;
};

class EncodeTreeConvKernel : public ConvEncodeBase {
 public:
  static constexpr const char* kName = "HalutEncodeTreeConv";
  static constexpr size_t kInputCount = 3;  // X, split_dims, thresholds
  static constexpr int kOutputTypes[] = {ort::kUint8};

  EncodeTreeConvKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 protected:  // the CUDA kernels (cuda_ops.h) reuse the validation and packing
  // The trees over compact columns: split dims renumbered into `elements`, the distinct patch indices they use.
  struct Compact {
    cpu::PackedTree tree;
    std::vector<int64_t> elements;
  };
  Compact pack(const TensorView& split_dims, const TensorView& thresholds) const;
  // The run's patches hold at least C elements and every split element.
  void check_patches(const Input& in, const Compact& packed) const;
  std::optional<Compact> packed_;
  cpu::EncodeTreeColsFn encode_cols_ = nullptr;  // the ISA's element-major kernel, if it has one
};

class EncodePqConvKernel : public ConvEncodeBase {
 public:
  static constexpr const char* kName = "HalutEncodePQConv";
  static constexpr size_t kInputCount = 3;  // X, vectors, biases
  static constexpr int kOutputTypes[] = {ort::kUint8};

  EncodePqConvKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 protected:  // the CUDA kernels (cuda_ops.h) reuse the validation and packing
  // The run's patch size Cin * kh * kw is vectors' D.
  void check_patches(const Input& in, const cpu::PackedPq& pq) const;
  std::optional<cpu::PackedPq> packed_;
  cpu::EncodePqColsFn encode_cols_ = nullptr;  // the ISA's element-major kernel, if it has one
};

class LookupConvKernel : public KernelBase {
 public:
  static constexpr const char* kName = "HalutLookupConv";
  static constexpr size_t kInputCount = 4;  // codes, lut, scale, offset
  static constexpr int kOutputTypes[] = {ort::kFloat};

  LookupConvKernel(const OrtApi* api, const OrtKernelInfo* info);
  void Compute(OrtKernelContext* ctx);

 protected:  // the CUDA kernels (cuda_ops.h) reuse the validation and packing
  std::optional<cpu::PackedLut> packed_;
  cpu::LookupNchwFn lookup_nchw_ = nullptr;  // the ISA's channel-major lookup, if it has one
};

}  // namespace halut
