// RMSNorm (Zhang & Sennrich 2019, as Llama) over the last dimension, forward and backward; reference:
// exec/cpu/norm.hpp (rms_norm_forward / rms_norm_backward): y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + 1e-5).
// x, y, dy, dx: (N, C) row-major in T (float or bf16); w and dw fp32; rstd (N) fp32, saved for backward.
// Backward ACCUMULATES into dx and dw. Same structure as layernorm.cuh (block per row; shared-memory dw partials), and
// the same dy element type DY (default T; DY = float reads a data-gradient GEMM's fp32 output without a cast pass).
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::rmsnorm {

struct Config {
  static constexpr int THREADS = 256;
  static constexpr int MAX_BACKWARD_BLOCKS = 512;
  static constexpr std::int64_t MAX_COLS = 32768; // backward keeps C floats of shared memory (128 KiB)
  static constexpr float EPS = 1e-5f;             // = exec::cpu::NORM_EPS
};

constexpr std::int64_t MAX_GRID_X = 2147483647;

template <typename T> struct ForwardArgs {
  T* y = nullptr;           // (N, C)
  float* rstd = nullptr;    // (N)
  const T* x = nullptr;     // (N, C)
  const float* w = nullptr; // (C)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(y, "rmsnorm::forward", "y");
    require_ptr(rstd, "rmsnorm::forward", "rstd");
    require_ptr(x, "rmsnorm::forward", "x");
    require_ptr(w, "rmsnorm::forward", "w");
    require(rows > 0 && rows <= MAX_GRID_X, "rmsnorm::forward", "rows must be in [1, 2^31)", rows);
    require(cols > 0, "rmsnorm::forward", "cols must be positive", cols);
  }
};

template <typename T, typename DY = T> struct BackwardArgs {
  T* dx = nullptr;             // (N, C), accumulated
  float* dw = nullptr;         // (C), accumulated
  const DY* dy = nullptr;      // (N, C): T, or fp32 straight from a data-gradient GEMM
  const T* x = nullptr;        // (N, C)
  const float* w = nullptr;    // (C)
  const float* rstd = nullptr; // (N)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  [[nodiscard]] dim3 grid() const {
    return dim3(static_cast<unsigned>(rows < Config::MAX_BACKWARD_BLOCKS ? rows : Config::MAX_BACKWARD_BLOCKS));
  }
  [[nodiscard]] std::size_t smem_bytes() const { return static_cast<std::size_t>(cols) * sizeof(float); }
  void validate() const {
    require_ptr(dx, "rmsnorm::backward", "dx");
    require_ptr(dw, "rmsnorm::backward", "dw");
    require_ptr(dy, "rmsnorm::backward", "dy");
    require_ptr(x, "rmsnorm::backward", "x");
    require_ptr(w, "rmsnorm::backward", "w");
    require_ptr(rstd, "rmsnorm::backward", "rstd");
    require(rows > 0, "rmsnorm::backward", "rows must be positive", rows);
    require(cols > 0 && cols <= Config::MAX_COLS, "rmsnorm::backward", "cols must be in [1, 32768]", cols);
  }
};

template <typename T> void forward(const ForwardArgs<T>& args, cudaStream_t stream);
template <typename T, typename DY = T> void backward(const BackwardArgs<T, DY>& args, cudaStream_t stream);

} // namespace cuboid::kernels::rmsnorm
