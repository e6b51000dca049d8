// RoPE: a rotation per (position, frequency); its gradient is the inverse rotation.
#include "exec/cpu/rope.hpp"

#include <cmath>

namespace cuboid::exec::cpu {

namespace {
void rotate(MatRef x, std::int64_t batch, std::int64_t head_dim, float sign, std::int64_t first_row) {
  const std::int64_t half = head_dim / 2;
  const std::int64_t heads = x.cols() / head_dim;
  for (Eigen::Index row = 0; row < x.rows(); ++row) {
    const auto pos = static_cast<float>((first_row + row) / batch);
    for (std::int64_t i = 0; i < half; ++i) {
      const float freq = std::pow(ROPE_THETA, -2.0f * static_cast<float>(i) / static_cast<float>(head_dim));
      const float c = std::cos(pos * freq);
      const float s = sign * std::sin(pos * freq);
      for (std::int64_t h = 0; h < heads; ++h) {
        float& a = x(row, h * head_dim + i);
        float& b = x(row, h * head_dim + i + half);
        const float a0 = a;
        a = a0 * c - b * s;
        b = a0 * s + b * c;
      }
    }
  }
}
} // namespace

void rope_forward(MatRef x, std::int64_t batch, std::int64_t head_dim) { rotate(x, batch, head_dim, 1.0f, 0); }
void rope_backward(MatRef dx, std::int64_t batch, std::int64_t head_dim) { rotate(dx, batch, head_dim, -1.0f, 0); }
void rope_forward(MatRef x, std::int64_t batch, std::int64_t head_dim, std::int64_t first_row) {
  rotate(x, batch, head_dim, 1.0f, first_row);
}
void rope_backward(MatRef dx, std::int64_t batch, std::int64_t head_dim, std::int64_t first_row) {
  rotate(dx, batch, head_dim, -1.0f, first_row);
}

} // namespace cuboid::exec::cpu
