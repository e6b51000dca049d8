// Element-type conversions fp32 <-> bf16 (round to nearest even, as __float2bfloat16_rn), for the bf16 copies of
// fp32 master weights and for the fp32 views of bf16 activations. Contiguous n elements, grid-stride loop. Memory
// bound: with n a multiple of 8 and both pointers 16-byte aligned each thread converts 8 elements per step with
// 16-byte accesses (for HBM bandwidth; grid over n / 8, not grid()), else one element; the results are identical.
// Reference: exec/cpu has no cast (it is fp32 only); the tests compare against the host bit-level rounding of
// tests/kernels/bf16_host.hpp.
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::cast {

struct Config {
  static constexpr int THREADS = 256;
  static constexpr int MAX_BLOCKS = 65536;
};

template <typename Out, typename In> struct Args {
  Out* out = nullptr;      // (n)
  const In* in = nullptr;  // (n)
  std::int64_t n = 0;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(n, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(out, "cast::convert", "out");
    require_ptr(in, "cast::convert", "in");
    require(n > 0, "cast::convert", "n must be positive", n);
  }
};

/// Instantiated for (bf16 <- float) and (float <- bf16).
template <typename Out, typename In> void convert(const Args<Out, In>& args, cudaStream_t stream);

} // namespace cuboid::kernels::cast
