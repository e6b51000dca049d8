// Layer norm over the last (hidden) dimension, forward and backward; reference: exec/cpu/norm.hpp
// (layer_norm_forward / layer_norm_backward, eps = 1e-5). x, y, dy, dx: (N, C) row-major in element type T (float or
// bf16); weights w, b and their gradients are fp32 (master weights); mean and rstd (N) are fp32, saved for backward.
// All sums are fp32. Backward ACCUMULATES into dx, dw and db, like the CPU op (callers zero them).
// The backward's dy has its own element type DY (default T): DY = float takes the fp32 output of a data-gradient
// GEMM (after its TP all-reduce) as it is, which saves the cast pass to bf16 before the norm (an fp32 read and a bf16
// write of (N, C) in HBM, and a launch) and the rounding of dy to bf16. Instantiated for <float, float>,
// <bf16, bf16> and <bf16, float>.
// Forward: one block per row, two passes (mean, then variance) as the CPU reference. Backward: each block keeps
// fp32 partial dw / db in shared memory over a strided set of rows and adds them to global memory once (so the
// atomics are grid * C, not N * C), as karpathy/llm.c llmc/layernorm.cuh layernorm_backward_kernel10.
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::layernorm {

struct Config {
  static constexpr int THREADS = 256;            // per block; a multiple of 32 (block reductions)
  static constexpr int MAX_BACKWARD_BLOCKS = 512; // backward grid cap (a few waves on 132 SMs)
  static constexpr std::int64_t MAX_COLS = 16384; // backward keeps 2 * C floats of shared memory (128 KiB)
  static constexpr float EPS = 1e-5f;            // = exec::cpu::NORM_EPS
};

constexpr std::int64_t MAX_GRID_X = 2147483647;

template <typename T> struct ForwardArgs {
  T* y = nullptr;          // (N, C)
  float* mean = nullptr;   // (N)
  float* rstd = nullptr;   // (N)
  const T* x = nullptr;    // (N, C)
  const float* w = nullptr; // (C)
  const float* b = nullptr; // (C)
  std::int64_t rows = 0;   // N
  std::int64_t cols = 0;   // C
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(y, "layernorm::forward", "y");
    require_ptr(mean, "layernorm::forward", "mean");
    require_ptr(rstd, "layernorm::forward", "rstd");
    require_ptr(x, "layernorm::forward", "x");
    require_ptr(w, "layernorm::forward", "w");
    require_ptr(b, "layernorm::forward", "b");
    require(rows > 0 && rows <= MAX_GRID_X, "layernorm::forward", "rows must be in [1, 2^31)", rows);
    require(cols > 0, "layernorm::forward", "cols must be positive", cols);
  }
};

template <typename T, typename DY = T> struct BackwardArgs {
  T* dx = nullptr;           // (N, C), accumulated
  float* dw = nullptr;       // (C), accumulated
  float* db = nullptr;       // (C), accumulated
  const DY* dy = nullptr;    // (N, C): T, or fp32 straight from a data-gradient GEMM
  const T* x = nullptr;      // (N, C)
  const float* w = nullptr;  // (C)
  const float* mean = nullptr; // (N)
  const float* rstd = nullptr; // (N)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  [[nodiscard]] dim3 grid() const {
    return dim3(static_cast<unsigned>(rows < Config::MAX_BACKWARD_BLOCKS ? rows : Config::MAX_BACKWARD_BLOCKS));
  }
  [[nodiscard]] std::size_t smem_bytes() const { return static_cast<std::size_t>(2 * cols) * sizeof(float); }
  void validate() const {
    require_ptr(dx, "layernorm::backward", "dx");
    require_ptr(dw, "layernorm::backward", "dw");
    require_ptr(db, "layernorm::backward", "db");
    require_ptr(dy, "layernorm::backward", "dy");
    require_ptr(x, "layernorm::backward", "x");
    require_ptr(w, "layernorm::backward", "w");
    require_ptr(mean, "layernorm::backward", "mean");
    require_ptr(rstd, "layernorm::backward", "rstd");
    require(rows > 0, "layernorm::backward", "rows must be positive", rows);
    require(cols > 0 && cols <= Config::MAX_COLS, "layernorm::backward", "cols must be in [1, 16384]", cols);
  }
};

template <typename T> void forward(const ForwardArgs<T>& args, cudaStream_t stream);
template <typename T, typename DY = T> void backward(const BackwardArgs<T, DY>& args, cudaStream_t stream);

} // namespace cuboid::kernels::layernorm
