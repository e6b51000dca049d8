// Parameter initialisation on the device with the CPU backend's counter-based generator (exec/init.cpp:
// init_block, mix64, standard_normal by Box-Muller in double precision), so a GPU run starts from the same weights
// as the CPU run of the same seed without generating billions of values on the host. The key
// (mix64(seed) ^ hash_name(name)) is computed on the host by exec::mix64 / exec::hash_name. Results equal the host
// generator's up to the last bit of double-precision log / cos (then rounded to float: almost always identical).
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::init {

struct Config {
  static constexpr int THREADS = 256;
  static constexpr int MAX_BLOCKS = 65536;
};

/// out (rows, cols), the shard at (row0, col0) of a tensor with full_cols columns: out[r, c] = stddev *
/// standard_normal(key, (row0 + r) * full_cols + col0 + c).
struct NormalArgs {
  float* out = nullptr;
  std::uint64_t key = 0;
  double stddev = 0.0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row0 = 0;
  std::int64_t col0 = 0;
  std::int64_t full_cols = 0;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(rows * cols, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(out, "init::normal", "out");
    require(rows > 0 && cols > 0, "init::normal", "rows and cols must be positive", rows * cols);
    require(full_cols >= col0 + cols, "init::normal", "full_cols must be >= col0 + cols", full_cols);
  }
};

/// out (n) = value.
struct FillArgs {
  float* out = nullptr;
  float value = 0.0f;
  std::int64_t n = 0;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(n, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(out, "init::fill", "out");
    require(n > 0, "init::fill", "n must be positive", n);
  }
};

void normal(const NormalArgs& args, cudaStream_t stream);
void fill(const FillArgs& args, cudaStream_t stream);

} // namespace cuboid::kernels::init
