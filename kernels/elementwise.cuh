// Small elementwise and reduction kernels of the CUDA training runtime (exec/cuda/cuda_model.cpp), the pieces cuBLASLt
// does not fuse: bias add, the residual add after a row-parallel layer (x + fp32 partial + bias, the all-reduced
// GEMM output), bias gradients (column sums), and device-side sums for the loss and the gradient norm (so a step
// needs no host synchronisation until its end). References: exec/cpu (Eigen rowwise() += b, colwise().sum(),
// squaredNorm()). Element type T is float or bf16; every sum is fp32.
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::elementwise {

struct Config {
  static constexpr int THREADS = 256;
  static constexpr int MAX_BLOCKS = 65536;   // grid-stride beyond this
  // Column sums: a block sums COLUMN_TILE columns over one chunk of rows (each of its COLUMN_WARPS warps every
  // COLUMN_WARPS-th row, the 32 lanes on consecutive columns: coalesced), then adds its partial sums with one atomic
  // per column. Rows are split into chunks so that a (rows, 2048) gradient still gets ~COLUMN_TARGET_BLOCKS blocks
  // (132 SMs on an H100): one thread per column over all rows (cols / 256 blocks) left the GPU almost idle.
  static constexpr int COLUMN_TILE = 64;
  static constexpr int COLUMN_WARPS = 8;
  static constexpr int COLUMN_THREADS = COLUMN_WARPS * 32;
  static constexpr std::int64_t COLUMN_TARGET_BLOCKS = 1024;
  static constexpr std::int64_t COLUMN_MIN_ROWS = 64; // rows per chunk at least
  static constexpr std::int64_t MAX_GRID_Y = 65535;
  static constexpr int REDUCE_BLOCKS = 256;  // device sums: partial block sums added with one atomic each
};

/// y (rows, cols) += bias (cols) broadcast over rows. Like residual_add: with cols a multiple of the 16-byte vector
/// width (8 bf16, 4 fp32) and every pointer 16-byte aligned, 16-byte accesses (for HBM bandwidth; grid over
/// rows * cols / width, not grid()); else elementwise. Both give identical results.
template <typename T> struct BiasAddArgs {
  T* y = nullptr;
  const float* bias = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(rows * cols, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(y, "elementwise::bias_add", "y");
    require_ptr(bias, "elementwise::bias_add", "bias");
    require(rows > 0 && cols > 0, "elementwise::bias_add", "rows and cols must be positive", rows * cols);
  }
};

/// out (rows, cols) = x + (partial + bias) (bias may be null); out may alias x. Vector path as bias_add (without a
/// bias, rows * cols instead of cols must be a multiple of the width).
template <typename T> struct ResidualAddArgs {
  T* out = nullptr;
  const T* x = nullptr;
  const float* partial = nullptr;
  const float* bias = nullptr; // (cols) or null
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(rows * cols, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(out, "elementwise::residual_add", "out");
    require_ptr(x, "elementwise::residual_add", "x");
    require_ptr(partial, "elementwise::residual_add", "partial");
    require(rows > 0 && cols > 0, "elementwise::residual_add", "rows and cols must be positive", rows * cols);
  }
};

/// dbias (cols) += sum over rows of dy (rows, cols). The chunks' partial sums are added atomically (their order is
/// not deterministic: rounding-level differences only); with one chunk (rows <= COLUMN_MIN_ROWS) it is exact.
template <typename T> struct ColumnSumArgs {
  float* dbias = nullptr;
  const T* dy = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  [[nodiscard]] std::int64_t column_tiles() const { return ceil_div(cols, Config::COLUMN_TILE); }
  [[nodiscard]] std::int64_t row_chunks() const {
    const std::int64_t wanted = ceil_div(Config::COLUMN_TARGET_BLOCKS, column_tiles());
    const std::int64_t most = ceil_div(rows, Config::COLUMN_MIN_ROWS);
    const std::int64_t chunks = wanted < most ? wanted : most;
    return chunks < Config::MAX_GRID_Y ? chunks : Config::MAX_GRID_Y;
  }
  [[nodiscard]] dim3 grid() const {
    return dim3(static_cast<unsigned>(column_tiles()), static_cast<unsigned>(row_chunks()));
  }
  void validate() const {
    require_ptr(dbias, "elementwise::column_sum", "dbias");
    require_ptr(dy, "elementwise::column_sum", "dy");
    require(rows > 0 && cols > 0, "elementwise::column_sum", "rows and cols must be positive", rows * cols);
  }
};

/// acc[0] += scale * sum(x) (square = false) or scale * sum(x^2) (square = true) over n fp32 elements.
struct SumArgs {
  float* acc = nullptr;
  const float* x = nullptr;
  std::int64_t n = 0;
  float scale = 1.0f;
  bool square = false;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(n, Config::THREADS, Config::REDUCE_BLOCKS); }
  void validate() const {
    require_ptr(acc, "elementwise::sum", "acc");
    require_ptr(x, "elementwise::sum", "x");
    require(n > 0, "elementwise::sum", "n must be positive", n);
  }
};

template <typename T> void bias_add(const BiasAddArgs<T>& args, cudaStream_t stream);
template <typename T> void residual_add(const ResidualAddArgs<T>& args, cudaStream_t stream);
template <typename T> void column_sum(const ColumnSumArgs<T>& args, cudaStream_t stream);
void sum(const SumArgs& args, cudaStream_t stream);

} // namespace cuboid::kernels::elementwise
