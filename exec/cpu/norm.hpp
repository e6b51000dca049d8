// Layer norm and RMSNorm over the last (hidden) dimension, fp32, with full backward. eps = 1e-5 as GPT-2/Megatron.
// Backward functions ACCUMULATE into dx, dw, db (callers zero them) so that residual branches add up naturally.
#pragma once

#include "exec/cpu/tensor.hpp"

namespace cuboid::exec::cpu {

constexpr float NORM_EPS = 1e-5f;

/// y = (x - mean) * rstd * w + b; x, y: (N, C); w, b: (1, C); mean, rstd: (N) saved for backward.
void layer_norm_forward(const ConstMatRef& x, const ConstRowVecRef& w, const ConstRowVecRef& b, MatRef y,
                        ColVec& mean, ColVec& rstd);
void layer_norm_backward(const ConstMatRef& dy, const ConstMatRef& x, const ConstRowVecRef& w, const ColVec& mean,
                         const ColVec& rstd, MatRef dx, RowVecRef dw, RowVecRef db);

/// y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) (Llama); rstd: (N) saved for backward.
void rms_norm_forward(const ConstMatRef& x, const ConstRowVecRef& w, MatRef y, ColVec& rstd);
void rms_norm_backward(const ConstMatRef& dy, const ConstMatRef& x, const ConstRowVecRef& w, const ColVec& rstd,
                       MatRef dx, RowVecRef dw);

} // namespace cuboid::exec::cpu
