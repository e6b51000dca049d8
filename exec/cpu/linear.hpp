// Linear layer y = x W + b with W stored (in, out) row-major. Tensor parallelism is not inside the op: the layer code
// shards W by columns (column-parallel) or rows (row-parallel) and wraps the op with the conjugate TP operators of
// tp_ops.hpp (Megatron f / g).
#pragma once

#include "exec/cpu/tensor.hpp"

namespace cuboid::exec::cpu {

/// x: (N, K), w: (K, M), bias: (1, M) or nullptr, y: (N, M) overwritten.
void linear_forward(const ConstMatRef& x, const ConstMatRef& w, const float* bias, MatRef y);
/// dx = dy W^T (overwritten, or accumulated when `accumulate_dx`), dw += x^T dy, dbias += colsum(dy) (if non-null).
void linear_backward(const ConstMatRef& dy, const ConstMatRef& x, const ConstMatRef& w, MatRef dx, MatRef dw,
                     float* dbias, bool accumulate_dx = false);

} // namespace cuboid::exec::cpu
