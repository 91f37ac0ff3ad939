// Runs the NEON kernels (src/cpu/neon.cc) on inputs read from stdin and writes their outputs to stdout, so that
// tests/test_neon_kernels.py can check them against the numpy reference on an x86-64 machine under qemu-aarch64.
// Protocol (little-endian, as both sides are): int64 op (1 = encode_pq, 2 = lookup, 3 = encode_tree), the op's
// sizes as int64, then its arrays in the ops' input layouts (docs/ops.md); out: the op's output array.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../custom_ops/src/cpu/kernels.h"
#include "../../custom_ops/src/cpu/pack.h"

namespace {

template <typename T>
std::vector<T> read(int64_t n) {
  std::vector<T> v(static_cast<size_t>(n));
  if (n > 0 && std::fread(v.data(), sizeof(T), v.size(), stdin) != v.size()) {
    std::fprintf(stderr, "harness: short input\n");
    std::exit(2);
  }
  return v;
}

int64_t read1() { return read<int64_t>(1)[0]; }

template <typename T>
void write(const std::vector<T>& v) {
  std::fwrite(v.data(), sizeof(T), v.size(), stdout);
}

}  // namespace

int main() {
  using namespace halut::cpu;
  const IsaKernels& k = neon_kernels();
  const int64_t op = read1();
  if (op == 1) {
    const int64_t rows = read1(), D = read1(), C = read1();
    const auto X = read<float>(rows * D), vectors = read<float>(kCodes * D), biases = read<float>(C * kCodes);
    const PackedPq packed = pack_pq(vectors.data(), biases.data(), C, D);
    std::vector<uint8_t> codes(static_cast<size_t>(rows * C));
    k.encode_pq(X.data(), rows, packed.params(), codes.data());
    write(codes);
  } else if (op == 2) {
    const int64_t rows = read1(), M = read1(), C = read1();
    const auto codes = read<uint8_t>(rows * C);
    const auto lut = read<int8_t>(M * C * kCodes);
    const auto scale = read<float>(M), offset = read<float>(M);
    const PackedLut packed = pack_lut(lut.data(), scale.data(), offset.data(), M, C, k.lut_code_major);
    void* scratch = std::aligned_alloc(64, (lookup_scratch_bytes(packed.Cpad, packed.Mpad) + 63) / 64 * 64);
    std::vector<float> Y(static_cast<size_t>(rows * M));
    for (int64_t r = 0; r < rows; r += kLookupMaxRows) {  // the host layer's chunks
      const int64_t n = rows - r < kLookupMaxRows ? rows - r : kLookupMaxRows;
      k.lookup(codes.data() + r * C, n, packed.params(), Y.data() + r * M, scratch);
    }
    std::free(scratch);
    write(Y);
  } else if (op == 3) {
    const int64_t rows = read1(), D = read1(), C = read1();
    const auto X = read<float>(rows * D);
    const auto dims = read<int64_t>(C * kTreeDepth);
    const auto thresholds = read<float>(C * kTreeNodes);
    const PackedTree packed = pack_tree(dims.data(), thresholds.data(), C);
    std::vector<uint8_t> codes(static_cast<size_t>(rows * C));
    k.encode_tree(X.data(), rows, D, packed.params(), codes.data());
    write(codes);
  } else {
    std::fprintf(stderr, "harness: unknown op %lld\n", static_cast<long long>(op));
    return 2;
  }
  return 0;
}
