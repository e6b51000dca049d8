// Vocab-parallel cross-entropy: max all-reduce (stability), then sum-exp and target-logit all-reduces, as
// Megatron-LM core/tensor_parallel/cross_entropy.py.
#include "exec/cpu/cross_entropy.hpp"

#include <cmath>
#include <span>

namespace cuboid::exec::cpu {

void vocab_parallel_cross_entropy_forward(MatRef logits, std::span<const std::int32_t> targets,
                                          std::int64_t vocab_start, Communicator& tp, ColVec& losses) {
  const Eigen::Index rows = logits.rows();
  const Eigen::Index local_vocab = logits.cols();
  ColVec row_max = logits.rowwise().maxCoeff();
  tp.all_reduce(std::span<float>(row_max.data(), static_cast<std::size_t>(rows)), ReduceOp::Max);
  logits.colwise() -= row_max;
  // sums: first N entries sum of exp, next N the (shifted) target logit where this rank owns the target.
  ColVec sums = ColVec::Zero(2 * rows);
  for (Eigen::Index row = 0; row < rows; ++row) {
    const std::int64_t local = targets[static_cast<std::size_t>(row)] - vocab_start;
    if (local >= 0 && local < local_vocab) {
      sums(rows + row) = logits(row, local);
    }
  }
  logits = logits.array().exp().matrix();
  sums.head(rows) = logits.rowwise().sum();
  tp.all_reduce(std::span<float>(sums.data(), static_cast<std::size_t>(2 * rows)), ReduceOp::Sum);
  losses.resize(rows);
  for (Eigen::Index row = 0; row < rows; ++row) {
    losses(row) = std::log(sums(row)) - sums(rows + row);
    logits.row(row) /= sums(row);
  }
}

void vocab_parallel_cross_entropy_backward(const ConstMatRef& probs, std::span<const std::int32_t> targets,
                                           std::int64_t vocab_start, float scale, MatRef dlogits) {
  dlogits = probs * scale;
  for (Eigen::Index row = 0; row < probs.rows(); ++row) {
    const std::int64_t local = targets[static_cast<std::size_t>(row)] - vocab_start;
    if (local >= 0 && local < probs.cols()) {
      dlogits(row, local) -= scale;
    }
  }
}

} // namespace cuboid::exec::cpu
