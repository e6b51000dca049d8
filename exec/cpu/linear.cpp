// Linear layer on Eigen GEMMs (fp32).
#include "exec/cpu/linear.hpp"

namespace cuboid::exec::cpu {

void linear_forward(const ConstMatRef& x, const ConstMatRef& w, const float* bias, MatRef y) {
  y.noalias() = x * w;
  if (bias != nullptr) {
    y.rowwise() += Eigen::Map<const RowVec>(bias, w.cols());
  }
}

void linear_backward(const ConstMatRef& dy, const ConstMatRef& x, const ConstMatRef& w, MatRef dx, MatRef dw,
                     float* dbias, bool accumulate_dx) {
  if (accumulate_dx) {
    dx.noalias() += dy * w.transpose();
  } else {
    dx.noalias() = dy * w.transpose();
  }
  dw.noalias() += x.transpose() * dy;
  if (dbias != nullptr) {
    Eigen::Map<RowVec>(dbias, w.cols()) += dy.colwise().sum();
  }
}

} // namespace cuboid::exec::cpu
