#include "conv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

namespace halut {
namespace {

// Output positions gathered and encoded per kernel call: the gathered patches (64 x U floats) stay in L1/L2.
constexpr int64_t kBlockRows = 64;

// A thread's buffer for gathered patches or a lookup tile, apart from thread_scratch (the lookup's own).
float* conv_buffer(size_t floats) {
  struct Buffer {
    std::unique_ptr<float[]> storage;
    size_t capacity = 0;
  };
  thread_local Buffer buffer;
  if (buffer.capacity < floats) {
    buffer.storage.reset(new float[floats + 16]);
    buffer.capacity = floats;
  }
  auto address = reinterpret_cast<uintptr_t>(buffer.storage.get());
  return reinterpret_cast<float*>((address + 63) & ~uintptr_t{63});
}

}  // namespace

ConvGeometry::Resolved ConvGeometry::resolve(int64_t H, int64_t W) const {
  int64_t top = pads[0], left = pads[1], bottom = pads[2], right = pads[3];
  if (auto_pad == AutoPad::kSameUpper || auto_pad == AutoPad::kSameLower) {
    auto same = [&](int64_t size, int64_t k, int64_t s, int64_t d, int64_t& before, int64_t& after) {
      const int64_t out = (size + s - 1) / s;
      const int64_t total = std::max<int64_t>(0, (out - 1) * s + (k - 1) * d + 1 - size);
      const int64_t small = total / 2, big = total - total / 2;
      before = auto_pad == AutoPad::kSameUpper ? small : big;
      after = auto_pad == AutoPad::kSameUpper ? big : small;
    };
    same(H, kh, sh, dh, top, bottom);
    same(W, kw, sw, dw, left, right);
  } else if (auto_pad == AutoPad::kValid) {
    top = left = bottom = right = 0;
  }
  const int64_t Ho = (H + top + bottom - ((kh - 1) * dh + 1)) / sh + 1;
  const int64_t Wo = (W + left + right - ((kw - 1) * dw + 1)) / sw + 1;
  // A negative numerator must give 0 rows, not C++'s truncation toward zero.
  const bool empty_h = H + top + bottom < (kh - 1) * dh + 1, empty_w = W + left + right < (kw - 1) * dw + 1;
  return {top, left, empty_h ? 0 : Ho, empty_w ? 0 : Wo};
}

ConvEncodeBase::ConvEncodeBase(const OrtApi* api, const OrtKernelInfo* info, const char* op)
    : KernelBase(api, info, op) {
  // Reads an ints attribute; false when the node does not set it.
  auto ints = [&](const char* name, std::vector<int64_t>& out) {
    size_t count = 0;
    OrtStatus* status = api_.KernelInfoGetAttributeArray_int64(info, name, nullptr, &count);
    if (status != nullptr) {
      api_.ReleaseStatus(status);
      return false;
    }
    out.assign(count, 0);
    if (count > 0) check(api_.KernelInfoGetAttributeArray_int64(info, name, out.data(), &count));
    return true;
  };
  auto positive_pair = [&](const char* name, std::vector<int64_t>& v, bool required) {
    if (!ints(name, v)) {
      if (required) invalid(std::string("attribute '") + name + "' is required (2 ints [h, w])");
      v = {1, 1};
    }
    if (v.size() != 2 || v[0] < 1 || v[1] < 1) {
      std::string found;
      for (size_t i = 0; i < v.size(); ++i) found += (i ? ", " : "") + std::to_string(v[i]);
      invalid(std::string("attribute '") + name + "' must be 2 positive ints, found [" + found + "]");
    }
  };
  std::vector<int64_t> k, s, d, p;
  positive_pair("kernel_shape", k, true);
  positive_pair("strides", s, false);
  positive_pair("dilations", d, false);
  geometry_.kh = k[0], geometry_.kw = k[1], geometry_.sh = s[0], geometry_.sw = s[1];
  geometry_.dh = d[0], geometry_.dw = d[1];
  if (ints("pads", p)) {
    if (p.size() != 4 || *std::min_element(p.begin(), p.end()) < 0) {
      std::string found;
      for (size_t i = 0; i < p.size(); ++i) found += (i ? ", " : "") + std::to_string(p[i]);
      invalid("attribute 'pads' must be 4 ints >= 0 [top, left, bottom, right], found [" + found + "]");
    }
    std::copy(p.begin(), p.end(), geometry_.pads);
  }
  size_t size = 0;
  OrtStatus* status = api_.KernelInfoGetAttribute_string(info, "auto_pad", nullptr, &size);
  if (status != nullptr) {
    api_.ReleaseStatus(status);
  } else {
    std::string mode(size, '\0');
    if (size > 0) check(api_.KernelInfoGetAttribute_string(info, "auto_pad", mode.data(), &size));
    mode.resize(std::strlen(mode.c_str()));
    if (mode == "NOTSET" || mode.empty()) {
      geometry_.auto_pad = ConvGeometry::AutoPad::kNotSet;
    } else if (mode == "SAME_UPPER") {
      geometry_.auto_pad = ConvGeometry::AutoPad::kSameUpper;
    } else if (mode == "SAME_LOWER") {
      geometry_.auto_pad = ConvGeometry::AutoPad::kSameLower;
    } else if (mode == "VALID") {
      geometry_.auto_pad = ConvGeometry::AutoPad::kValid;
    } else {
      invalid("attribute 'auto_pad' is '" + mode + "', expected NOTSET, SAME_UPPER, SAME_LOWER or VALID");
    }
  }
}

ConvEncodeBase::Input ConvEncodeBase::conv_input(const OrtKernelContext* ctx) const {
  Input in;
  in.X = input(ctx, 0);
  expect_type(in.X, "X", ort::kFloat);
  expect_rank(in.X, "X", 4);
  in.B = in.X.shape[0], in.Cin = in.X.shape[1], in.H = in.X.shape[2], in.W = in.X.shape[3];
  in.D = in.Cin * geometry_.kh * geometry_.kw;
  in.geo = geometry_.resolve(in.H, in.W);
  return in;
}

PatchTable ConvEncodeBase::patch_table(const Input& in, const std::vector<int64_t>& elements) const {
  PatchTable t;
  const int64_t taps = geometry_.kh * geometry_.kw;
  for (int64_t d : elements) {
    const int64_t ci = d / taps, ky = d % taps / geometry_.kw, kx = d % geometry_.kw;
    const int64_t dy = ky * geometry_.dh, dx = kx * geometry_.dw;
    t.channel.push_back(static_cast<int32_t>(ci));
    t.dy.push_back(static_cast<int32_t>(dy));
    t.dx.push_back(static_cast<int32_t>(dx));
    t.offset.push_back((ci * in.H + dy) * in.W + dx);
  }
  return t;
}

void ConvEncodeBase::gather(const Input& in, const PatchTable& table, int64_t n0, int64_t rows, float* buf) const {
  const int64_t U = static_cast<int64_t>(table.offset.size());
  const int64_t P = in.geo.Ho * in.geo.Wo, HW = in.H * in.W;
  const int64_t span_h = (geometry_.kh - 1) * geometry_.dh, span_w = (geometry_.kw - 1) * geometry_.dw;
  const float* x = in.X.as<float>();
  const int64_t* offset = table.offset.data();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = n0 + r, b = n / P, pos = n % P;
    const int64_t iy0 = pos / in.geo.Wo * geometry_.sh - in.geo.top;
    const int64_t ix0 = pos % in.geo.Wo * geometry_.sw - in.geo.left;
    const float* image = x + b * in.Cin * HW;
    float* out = buf + r * U;
    if (iy0 >= 0 && ix0 >= 0 && iy0 + span_h < in.H && ix0 + span_w < in.W) {
      const float* corner = image + iy0 * in.W + ix0;
      for (int64_t u = 0; u < U; ++u) out[u] = corner[offset[u]];
    } else {
      // Padding: elements outside the image are 0.
      for (int64_t u = 0; u < U; ++u) {
        const int64_t iy = iy0 + table.dy[u], ix = ix0 + table.dx[u];
        out[u] = (iy >= 0 && iy < in.H && ix >= 0 && ix < in.W) ? image[table.channel[u] * HW + iy * in.W + ix]
                                                                 : 0.0f;
      }
    }
  }
}

void ConvEncodeBase::gather_cols(const Input& in, const PatchTable& table, int64_t n0, int64_t rows, int64_t ld,
                                 float* cols) const {
  const int64_t U = static_cast<int64_t>(table.offset.size());
  const int64_t Wo = in.geo.Wo, P = in.geo.Ho * Wo, HW = in.H * in.W, W = in.W;
  const int64_t sw = geometry_.sw;
  const int64_t span_h = (geometry_.kh - 1) * geometry_.dh, span_w = (geometry_.kw - 1) * geometry_.dw;
  // Output columns whose whole patch lies inside the image width: ox_lo .. ox_hi.
  const int64_t ox_lo = (in.geo.left + sw - 1) / sw;
  const int64_t last = W - 1 - span_w + in.geo.left;
  const int64_t ox_hi = last < 0 ? -1 : last / sw;
  const float* x = in.X.as<float>();
  for (int64_t r = 0; r < rows;) {
    const int64_t n = n0 + r, b = n / P, pos = n % P, oy = pos / Wo, ox0 = pos % Wo;
    const int64_t seg = std::min(rows - r, Wo - ox0);  // positions left in this output row
    const int64_t iy0 = oy * geometry_.sh - in.geo.top;
    const float* image = x + b * in.Cin * HW;
    const bool row_inside = iy0 >= 0 && iy0 + span_h < in.H;
    const int64_t k_lo = row_inside ? std::clamp(ox_lo - ox0, int64_t{0}, seg) : seg;
    const int64_t k_hi = row_inside ? std::clamp(ox_hi + 1 - ox0, k_lo, seg) : seg;
    for (int64_t u = 0; u < U; ++u) {
      float* dst = cols + u * ld + r;
      const int64_t dy = table.dy[u], dx = table.dx[u];
      const float* plane = image + table.channel[u] * HW;
      auto edge = [&](int64_t k) {
        const int64_t iy = iy0 + dy, ix = (ox0 + k) * sw - in.geo.left + dx;
        dst[k] = (iy >= 0 && iy < in.H && ix >= 0 && ix < W) ? plane[iy * W + ix] : 0.0f;
      };
      for (int64_t k = 0; k < k_lo; ++k) edge(k);
      const float* src = image + iy0 * W - in.geo.left + table.offset[u] + ox0 * sw;
      if (sw == 1) {
        if (k_hi > k_lo) std::memcpy(dst + k_lo, src + k_lo, static_cast<size_t>(k_hi - k_lo) * sizeof(float));
      } else {
        for (int64_t k = k_lo; k < k_hi; ++k) dst[k] = src[k * sw];
      }
      for (int64_t k = k_hi; k < seg; ++k) edge(k);
    }
    r += seg;
  }
}

template <typename Fn>
void ConvEncodeBase::for_row_blocks(OrtKernelContext* ctx, int64_t N, int64_t U, int64_t cost_per_row, Fn& fn) const {
  const int64_t task_rows = rows_per_task(cost_per_row);
  std::atomic<bool> out_of_memory{false};
  auto task = [&](int64_t t) noexcept {
    float* buf = nullptr;
    try {
      buf = conv_buffer(static_cast<size_t>(kBlockRows * U));
    } catch (...) {
      out_of_memory = true;
      return;
    }
    const int64_t end = std::min(N, (t + 1) * task_rows);
    for (int64_t n0 = t * task_rows; n0 < end; n0 += kBlockRows) fn(n0, std::min(kBlockRows, end - n0), buf);
  };
  parallel_for(ctx, (N + task_rows - 1) / task_rows, task);
  if (out_of_memory) throw std::bad_alloc();
}

// ---------------------------------------------------------------------------------------------------------------

EncodeTreeConvKernel::EncodeTreeConvKernel(const OrtApi* api, const OrtKernelInfo* info)
    : ConvEncodeBase(api, info, kName) {
  auto split_dims = constant_input(info, 1), thresholds = constant_input(info, 2);
  if (split_dims && thresholds) packed_ = pack(*split_dims, *thresholds);
  encode_cols_ = cpu::encode_tree_cols_for(isa_->name);
}

EncodeTreeConvKernel::Compact EncodeTreeConvKernel::pack(const TensorView& split_dims,
                                                         const TensorView& thresholds) const {
  const int64_t C = check_tree_weights(split_dims, thresholds, "patch");
  const int64_t* dims = split_dims.as<int64_t>();
  Compact out;
  out.elements.assign(dims, dims + C * cpu::kTreeDepth);
  std::sort(out.elements.begin(), out.elements.end());
  out.elements.erase(std::unique(out.elements.begin(), out.elements.end()), out.elements.end());
  std::vector<int64_t> compact(dims, dims + C * cpu::kTreeDepth);
  for (int64_t& d : compact) d = std::lower_bound(out.elements.begin(), out.elements.end(), d) - out.elements.begin();
  out.tree = cpu::pack_tree(compact.data(), thresholds.as<float>(), C);
  out.tree.max_split = out.elements.back();  // in patch indices, checked against each run's D
  return out;
}

void EncodeTreeConvKernel::check_patches(const Input& in, const Compact& packed) const {
  if (packed.tree.C > in.D) {
    invalid("C = " + std::to_string(packed.tree.C) + " codebooks exceed the patch size D = Cin * kh * kw = " +
            std::to_string(in.D) + " (expected C <= D)");
  }
  if (packed.tree.max_split >= in.D) {
    invalid("input 'split_dims' has " + std::to_string(packed.tree.max_split) + ", outside the patch indices 0 .. " +
            std::to_string(in.D - 1) + " (D = Cin * kh * kw, X shape " + in.X.shape_str() + ")");
  }
}

void EncodeTreeConvKernel::Compute(OrtKernelContext* ctx) {
  const Input in = conv_input(ctx);
  std::optional<Compact> per_run;
  if (!packed_) per_run = pack(input(ctx, 1), input(ctx, 2));
  const Compact& packed = packed_ ? *packed_ : *per_run;
  check_patches(in, packed);
  const int64_t C = packed.tree.C;
  uint8_t* codes = static_cast<uint8_t*>(output(ctx, 0, {in.B, in.geo.Ho, in.geo.Wo, C}));
  const int64_t N = in.B * in.geo.Ho * in.geo.Wo;
  if (N == 0) return;
  const PatchTable table = patch_table(in, packed.elements);
  const int64_t U = static_cast<int64_t>(packed.elements.size());
  const cpu::TreeParams params = packed.tree.params();
  const cpu::IsaKernels* isa = isa_;
  const cpu::EncodeTreeColsFn encode_cols = encode_cols_;
  auto block = [&](int64_t n0, int64_t rows, float* buf) {
    if (encode_cols != nullptr) {
      gather_cols(in, table, n0, rows, kBlockRows, buf);
      encode_cols(buf, kBlockRows, rows, params, codes + n0 * C);
    } else {
      gather(in, table, n0, rows, buf);
      isa->encode_tree(buf, rows, U, params, codes + n0 * C);
    }
  };
  for_row_blocks(ctx, N, U, 2 * U + 8 * C, block);
}

// ---------------------------------------------------------------------------------------------------------------

EncodePqConvKernel::EncodePqConvKernel(const OrtApi* api, const OrtKernelInfo* info)
    : ConvEncodeBase(api, info, kName) {
  auto vectors = constant_input(info, 1), biases = constant_input(info, 2);
  if (vectors && biases) packed_ = pack_pq_weights(*vectors, *biases);
  encode_cols_ = cpu::encode_pq_cols_for(isa_->name);
}

void EncodePqConvKernel::check_patches(const Input& in, const cpu::PackedPq& pq) const {
  if (in.D != pq.D) {
    invalid("input 'X' has Cin * kh * kw = " + std::to_string(in.Cin) + " * " + std::to_string(geometry_.kh) +
            " * " + std::to_string(geometry_.kw) + " = " + std::to_string(in.D) + " patch elements but 'vectors' has D = " +
            std::to_string(pq.D) + " (X shape " + in.X.shape_str() + ")");
  }
}

void EncodePqConvKernel::Compute(OrtKernelContext* ctx) {
  const Input in = conv_input(ctx);
  std::optional<cpu::PackedPq> per_run;
  if (!packed_) per_run = pack_pq_weights(input(ctx, 1), input(ctx, 2));
  const cpu::PackedPq& pq = packed_ ? *packed_ : *per_run;
  check_patches(in, pq);
  uint8_t* codes = static_cast<uint8_t*>(output(ctx, 0, {in.B, in.geo.Ho, in.geo.Wo, pq.C}));
  const int64_t N = in.B * in.geo.Ho * in.geo.Wo;
  if (N == 0) return;
  std::vector<int64_t> all(static_cast<size_t>(in.D));
  for (int64_t d = 0; d < in.D; ++d) all[d] = d;
  const PatchTable table = patch_table(in, all);
  const cpu::PqParams params = pq.params();
  const cpu::IsaKernels* isa = isa_;
  const cpu::EncodePqColsFn encode_cols = encode_cols_;
  auto block = [&](int64_t n0, int64_t rows, float* buf) {
    if (encode_cols != nullptr) {
      gather_cols(in, table, n0, rows, kBlockRows, buf);
      encode_cols(buf, kBlockRows, rows, params, codes + n0 * pq.C);
    } else {
      gather(in, table, n0, rows, buf);
      isa->encode_pq(buf, rows, params, codes + n0 * pq.C);
    }
  };
  for_row_blocks(ctx, N, in.D, 3 * in.D + 16 * pq.C, block);
}

// ---------------------------------------------------------------------------------------------------------------

LookupConvKernel::LookupConvKernel(const OrtApi* api, const OrtKernelInfo* info) : KernelBase(api, info, kName) {
  auto lut = constant_input(info, 1), scale = constant_input(info, 2), offset = constant_input(info, 3);
  if (lut && scale && offset) packed_ = pack_lut_weights(*lut, *scale, *offset);
  lookup_nchw_ = cpu::lookup_nchw_for(isa_->name);
}

void LookupConvKernel::Compute(OrtKernelContext* ctx) {
  const TensorView codes = input(ctx, 0);
  expect_type(codes, "codes", ort::kUint8);
  expect_rank(codes, "codes", 4);
  std::optional<cpu::PackedLut> per_run;
  if (!packed_) per_run = pack_lut_weights(input(ctx, 1), input(ctx, 2), input(ctx, 3));
  const cpu::PackedLut& lut = packed_ ? *packed_ : *per_run;
  expect_dim(codes, "codes", 3, lut.C, "C, lut's dim 1");
  const int64_t B = codes.shape[0], Ho = codes.shape[1], Wo = codes.shape[2], M = lut.M, C = lut.C;
  float* Y = static_cast<float*>(output(ctx, 0, {B, M, Ho, Wo}));
  const int64_t P = Ho * Wo;
  if (B * P == 0 || M == 0) return;

  const cpu::LutParams params = lut.params();  // the row kernel writes a tile, never streams
  const uint8_t* code_data = codes.as<uint8_t>();
  const size_t scratch_bytes = cpu::lookup_scratch_bytes(lut.Cpad, lut.Mpad);
  const cpu::IsaKernels* isa = isa_;
  const cpu::LookupNchwFn lookup_nchw = lookup_nchw_;
  std::atomic<bool> out_of_memory{false};
  // Tasks never straddle two images: each covers a run of positions of one b.
  const int64_t task_rows = std::min(rows_per_task(lut.Mpad * lut.Cpad / 64 + lut.Mpad / 2),
                                     (P + cpu::kRowGranularity - 1) / cpu::kRowGranularity * cpu::kRowGranularity);
  const int64_t tasks_per_image = (P + task_rows - 1) / task_rows;
  auto task = [&](int64_t t) noexcept {
    void* scratch = nullptr;
    float* tile = nullptr;
    try {
      scratch = thread_scratch(scratch_bytes);
      tile = conv_buffer(static_cast<size_t>(cpu::kLookupMaxRows * M));
    } catch (...) {
      out_of_memory = true;
      return;
    }
    const int64_t b = t / tasks_per_image, p_begin = t % tasks_per_image * task_rows;
    const int64_t p_end = std::min(P, p_begin + task_rows);
    float* image = Y + b * M * P;
    for (int64_t p0 = p_begin; p0 < p_end; p0 += cpu::kLookupMaxRows) {
      const int64_t rows = std::min(cpu::kLookupMaxRows, p_end - p0);
      if (lookup_nchw != nullptr) {
        lookup_nchw(code_data + (b * P + p0) * C, rows, params, image + p0, P, scratch);
        continue;
      }
      isa->lookup(code_data + (b * P + p0) * C, rows, params, tile, scratch);
      // tile [rows][M] -> Y[b][m][p0 + r], 16 positions at a time so that each output run is written whole.
      for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        const int64_t nr = std::min<int64_t>(16, rows - r0);
        for (int64_t m = 0; m < M; ++m) {
          float* out = image + m * P + p0 + r0;
          const float* in = tile + r0 * M + m;
          for (int64_t r = 0; r < nr; ++r) out[r] = in[r * M];
        }
      }
    }
  };
  parallel_for(ctx, B * tasks_per_image, task);
  if (out_of_memory) throw std::bad_alloc();
}

}  // namespace halut
