// AdamW (Loshchilov & Hutter 2019) with bias correction and decoupled weight decay, on flat fp32 spans.
#pragma once

#include <cstddef>
#include <span>

namespace cuboid::exec::cpu {

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // applied to matrices only (the caller passes 0 for biases and norms)
  float max_grad_norm = 0.0f; // 0 = no clipping; else grads are scaled by min(1, max / global norm)
};

/// One update of `param` with `grad * grad_scale`; `m`, `v` are the moment buffers; `step` counts from 1.
/// p -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * p).
void adamw_update(std::span<float> param, std::span<const float> grad, std::span<float> m, std::span<float> v,
                  int step, const AdamWConfig& config, float weight_decay, float grad_scale);

/// The `grad_scale` of gradient clipping from the global sum of squared gradients: min(1, max_grad_norm / (norm +
/// 1e-6)), or 1 without clipping (max_grad_norm <= 0). Both backends' optimizer steps use it.
float clip_grad_scale(float grad_sumsq, const AdamWConfig& config);

} // namespace cuboid::exec::cpu
