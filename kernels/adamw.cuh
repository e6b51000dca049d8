// AdamW (Loshchilov & Hutter 2019) with bias correction and decoupled weight decay on flat fp32 buffers; reference:
// exec/cpu/adamw.hpp (adamw_update): g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr * (m / c1 / (sqrt(v / c2) + eps) + wd * p), with c1 = 1 - b1^step, c2 = 1 - b2^step computed on the host
// in fp32 exactly as the CPU op. Optionally writes the bf16 copy of the updated parameter (for bf16 GEMMs) in the
// same pass. One pass over param, grad, m, v: memory bound.
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::adamw {

struct Config {
  static constexpr int THREADS = 256;
  static constexpr int MAX_BLOCKS = 65536;
};

struct Args {
  float* param = nullptr;     // (n), updated
  float* m = nullptr;         // (n), updated
  float* v = nullptr;         // (n), updated
  bf16* param_bf16 = nullptr; // (n) or nullptr: receives bf16(param) after the update
  const float* grad = nullptr; // (n)
  std::int64_t n = 0;
  int step = 0;               // counts from 1
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float grad_scale = 1.0f;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(n, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(param, "adamw::update", "param");
    require_ptr(m, "adamw::update", "m");
    require_ptr(v, "adamw::update", "v");
    require_ptr(grad, "adamw::update", "grad");
    require(n > 0, "adamw::update", "n must be positive", n);
    require(step >= 1, "adamw::update", "step must be >= 1", static_cast<std::int64_t>(step));
    require(lr >= 0.0f, "adamw::update", "lr must be >= 0", static_cast<double>(lr));
    require(beta1 >= 0.0f && beta1 < 1.0f, "adamw::update", "beta1 must be in [0, 1)", static_cast<double>(beta1));
    require(beta2 >= 0.0f && beta2 < 1.0f, "adamw::update", "beta2 must be in [0, 1)", static_cast<double>(beta2));
  }
};

void update(const Args& args, cudaStream_t stream);

} // namespace cuboid::kernels::adamw
