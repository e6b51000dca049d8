// Elementwise activation kernels. GeLU uses the tanh approximation of Hendrycks & Gimpel (2016), as GPT-2.
#include "exec/cpu/activation.hpp"

#include <cmath>

namespace cuboid::exec::cpu {

namespace {
constexpr float GELU_SCALE = 0.7978845608028654f; // sqrt(2 / pi)
constexpr float GELU_CUBIC = 0.044715f;

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
} // namespace

void gelu_forward(const ConstMatRef& x, MatRef y) {
  y = x.unaryExpr([](float v) {
    return 0.5f * v * (1.0f + std::tanh(GELU_SCALE * (v + GELU_CUBIC * v * v * v)));
  });
}

void gelu_backward(const ConstMatRef& dy, const ConstMatRef& x, MatRef dx) {
  dx = x.binaryExpr(dy, [](float v, float g) {
    const float inner = GELU_SCALE * (v + GELU_CUBIC * v * v * v);
    const float t = std::tanh(inner);
    const float dinner = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * v * v);
    return g * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner);
  });
}

void swiglu_forward(const ConstMatRef& gate, const ConstMatRef& up, MatRef y) {
  y = gate.binaryExpr(up, [](float g, float u) { return g * sigmoid(g) * u; });
}

void swiglu_backward(const ConstMatRef& dy, const ConstMatRef& gate, const ConstMatRef& up, MatRef dgate, MatRef dup) {
  dup = gate.binaryExpr(dy, [](float g, float d) { return d * g * sigmoid(g); });
  const Mat dsilu = gate.unaryExpr([](float g) {
    const float s = sigmoid(g);
    return s * (1.0f + g * (1.0f - s));
  });
  dgate = (dy.array() * up.array() * dsilu.array()).matrix();
}

} // namespace cuboid::exec::cpu
