// AdamW update loop (memory bound; one pass over param, grad and both moments).
#include "exec/cpu/adamw.hpp"

#include <algorithm>
#include <cmath>

namespace cuboid::exec::cpu {

void adamw_update(std::span<float> param, std::span<const float> grad, std::span<float> m, std::span<float> v,
                  int step, const AdamWConfig& config, float weight_decay, float grad_scale) {
  const float correction1 = 1.0f - std::pow(config.beta1, static_cast<float>(step));
  const float correction2 = 1.0f - std::pow(config.beta2, static_cast<float>(step));
  for (std::size_t idx = 0; idx < param.size(); ++idx) {
    const float g = grad[idx] * grad_scale;
    m[idx] = config.beta1 * m[idx] + (1.0f - config.beta1) * g;
    v[idx] = config.beta2 * v[idx] + (1.0f - config.beta2) * g * g;
    const float mhat = m[idx] / correction1;
    const float vhat = v[idx] / correction2;
    param[idx] -= config.lr * (mhat / (std::sqrt(vhat) + config.eps) + weight_decay * param[idx]);
  }
}

float clip_grad_scale(float grad_sumsq, const AdamWConfig& config) {
  if (config.max_grad_norm <= 0.0f) {
    return 1.0f;
  }
  return std::min(1.0f, config.max_grad_norm / (std::sqrt(grad_sumsq) + 1e-6f));
}

} // namespace cuboid::exec::cpu
