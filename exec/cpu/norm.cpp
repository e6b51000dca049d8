// Layer norm / RMSNorm kernels (row loops; each row is independent). Backward follows the usual derivation
// (karpathy/llm.c train_gpt2.c layernorm_backward): dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
#include "exec/cpu/norm.hpp"

#include <cmath>

namespace cuboid::exec::cpu {

void layer_norm_forward(const ConstMatRef& x, const ConstRowVecRef& w, const ConstRowVecRef& b, MatRef y,
                        ColVec& mean, ColVec& rstd) {
  const Eigen::Index rows = x.rows();
  const auto cols = static_cast<float>(x.cols());
  mean.resize(rows);
  rstd.resize(rows);
  for (Eigen::Index row = 0; row < rows; ++row) {
    const float mu = x.row(row).sum() / cols;
    const float var = (x.row(row).array() - mu).square().sum() / cols;
    const float rs = 1.0f / std::sqrt(var + NORM_EPS);
    mean(row) = mu;
    rstd(row) = rs;
    y.row(row) = ((x.row(row).array() - mu) * rs * w.array() + b.array()).matrix();
  }
}

void layer_norm_backward(const ConstMatRef& dy, const ConstMatRef& x, const ConstRowVecRef& w, const ColVec& mean,
                         const ColVec& rstd, MatRef dx, RowVecRef dw, RowVecRef db) {
  const Eigen::Index rows = x.rows();
  const auto cols = static_cast<float>(x.cols());
  for (Eigen::Index row = 0; row < rows; ++row) {
    const Eigen::Array<float, 1, Eigen::Dynamic> xhat = (x.row(row).array() - mean(row)) * rstd(row);
    const Eigen::Array<float, 1, Eigen::Dynamic> dxhat = dy.row(row).array() * w.array();
    const float mean_dxhat = dxhat.sum() / cols;
    const float mean_dxhat_xhat = (dxhat * xhat).sum() / cols;
    dx.row(row).array() += rstd(row) * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
    dw.array() += dy.row(row).array() * xhat;
    db += dy.row(row);
  }
}

void rms_norm_forward(const ConstMatRef& x, const ConstRowVecRef& w, MatRef y, ColVec& rstd) {
  const Eigen::Index rows = x.rows();
  const auto cols = static_cast<float>(x.cols());
  rstd.resize(rows);
  for (Eigen::Index row = 0; row < rows; ++row) {
    const float rs = 1.0f / std::sqrt(x.row(row).squaredNorm() / cols + NORM_EPS);
    rstd(row) = rs;
    y.row(row) = (x.row(row).array() * rs * w.array()).matrix();
  }
}

void rms_norm_backward(const ConstMatRef& dy, const ConstMatRef& x, const ConstRowVecRef& w, const ColVec& rstd,
                       MatRef dx, RowVecRef dw) {
  const Eigen::Index rows = x.rows();
  const auto cols = static_cast<float>(x.cols());
  for (Eigen::Index row = 0; row < rows; ++row) {
    const Eigen::Array<float, 1, Eigen::Dynamic> xhat = x.row(row).array() * rstd(row);
    const Eigen::Array<float, 1, Eigen::Dynamic> dxhat = dy.row(row).array() * w.array();
    const float mean_dxhat_xhat = (dxhat * xhat).sum() / cols;
    dx.row(row).array() += rstd(row) * (dxhat - xhat * mean_dxhat_xhat);
    dw.array() += dy.row(row).array() * xhat;
  }
}

} // namespace cuboid::exec::cpu
