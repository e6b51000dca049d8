// MLP activations: GeLU (tanh approximation, GPT-2) and SwiGLU (silu(gate) * up, Llama), with backward.
#pragma once

#include "exec/cpu/tensor.hpp"

namespace cuboid::exec::cpu {

/// y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); x, y: (N, F).
void gelu_forward(const ConstMatRef& x, MatRef y);
/// dx = dy * gelu'(x) (overwritten).
void gelu_backward(const ConstMatRef& dy, const ConstMatRef& x, MatRef dx);

/// y = silu(gate) * up; gate, up, y: (N, F).
void swiglu_forward(const ConstMatRef& gate, const ConstMatRef& up, MatRef y);
/// dgate, dup overwritten.
void swiglu_backward(const ConstMatRef& dy, const ConstMatRef& gate, const ConstMatRef& up, MatRef dgate, MatRef dup);

} // namespace cuboid::exec::cpu
