// Causal attention on Eigen: per (batch element, head) views with a row stride of B * width select the rows
// t * B + b of the [s, b] layout without copies. Backward (dS = P o (dP - rowsum(dP o P))) as in FlashAttention's
// reference derivation (Dao et al. 2022, appendix B.2).
#include "exec/cpu/attention.hpp"

#include <cmath>
#include <limits>

namespace cuboid::exec::cpu {

namespace {
using Strided = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
using ConstStrided = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;

// Rows t*B + b, columns head*D .. head*D + D - 1 of a (T*B, heads*D) row-major matrix.
ConstStrided head_view(const ConstMatRef& m, const AttentionShape& s, std::int64_t b, std::int64_t head) {
  return {m.data() + b * m.cols() + head * s.head_dim, s.seq, s.head_dim, Eigen::OuterStride<>(s.batch * m.cols())};
}
Strided head_view(MatRef m, const AttentionShape& s, std::int64_t b, std::int64_t head) {
  return {m.data() + b * m.cols() + head * s.head_dim, s.seq, s.head_dim, Eigen::OuterStride<>(s.batch * m.cols())};
}

// Causal softmax of Q K^T * scale into p (T, T); masked entries are exactly 0.
void causal_softmax(const ConstStrided& qh, const ConstStrided& kh, float scale, Eigen::Ref<Mat> p) {
  p.noalias() = (qh * kh.transpose()) * scale;
  const Eigen::Index seq = p.rows();
  for (Eigen::Index row = 0; row < seq; ++row) {
    auto valid = p.row(row).head(row + 1);
    const float mx = valid.maxCoeff();
    valid = (valid.array() - mx).exp().matrix();
    valid /= valid.sum();
    p.row(row).tail(seq - row - 1).setZero();
  }
}
// Rows r*B + b (r < rows) of a row-major matrix: a head's view with an explicit row count (CP queries: Tq rows).
ConstStrided rows_view(const ConstMatRef& m, std::int64_t rows, const AttentionShape& s, std::int64_t b,
                       std::int64_t head) {
  return {m.data() + b * m.cols() + head * s.head_dim, rows, s.head_dim, Eigen::OuterStride<>(s.batch * m.cols())};
}
Strided rows_view(MatRef m, std::int64_t rows, const AttentionShape& s, std::int64_t b, std::int64_t head) {
  return {m.data() + b * m.cols() + head * s.head_dim, rows, s.head_dim, Eigen::OuterStride<>(s.batch * m.cols())};
}

// Softmax of Q K^T * scale over the keys at global positions <= the query's; masked entries exactly 0.
void positioned_softmax(const ConstStrided& qh, const ConstStrided& kh, std::span<const std::int64_t> q_positions,
                        float scale, Eigen::Ref<Mat> p) {
  p.noalias() = (qh * kh.transpose()) * scale;
  const Eigen::Index keys = p.cols();
  for (Eigen::Index row = 0; row < p.rows(); ++row) {
    const Eigen::Index visible = q_positions[static_cast<std::size_t>(row)] + 1;
    auto valid = p.row(row).head(visible);
    const float mx = valid.maxCoeff();
    valid = (valid.array() - mx).exp().matrix();
    valid /= valid.sum();
    p.row(row).tail(keys - visible).setZero();
  }
}
} // namespace

void attention_forward_cp(const AttentionShape& shape, std::span<const std::int64_t> q_positions, const ConstMatRef& q,
                          const ConstMatRef& k, const ConstMatRef& v, MatRef out, Mat* probs) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const std::int64_t group = shape.q_heads / shape.kv_heads;
  const auto tq = static_cast<std::int64_t>(q_positions.size());
  if (probs != nullptr) {
    probs->resize(shape.batch * shape.q_heads * tq, shape.seq);
  }
  Mat p(tq, shape.seq);
  for (std::int64_t b = 0; b < shape.batch; ++b) {
    for (std::int64_t head = 0; head < shape.q_heads; ++head) {
      const std::int64_t kv_head = head / group;
      positioned_softmax(rows_view(q, tq, shape, b, head), head_view(k, shape, b, kv_head), q_positions, scale, p);
      rows_view(out, tq, shape, b, head).noalias() = p * head_view(v, shape, b, kv_head);
      if (probs != nullptr) {
        probs->middleRows((b * shape.q_heads + head) * tq, tq) = p;
      }
    }
  }
}

void attention_backward_cp(const AttentionShape& shape, std::span<const std::int64_t> q_positions,
                           const ConstMatRef& dout, const ConstMatRef& q, const ConstMatRef& k, const ConstMatRef& v,
                           const Mat* probs, MatRef dq, MatRef dk, MatRef dv) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const std::int64_t group = shape.q_heads / shape.kv_heads;
  const auto tq = static_cast<std::int64_t>(q_positions.size());
  dq.setZero();
  dk.setZero();
  dv.setZero();
  Mat p(tq, shape.seq);
  Mat dp(tq, shape.seq);
  for (std::int64_t b = 0; b < shape.batch; ++b) {
    for (std::int64_t head = 0; head < shape.q_heads; ++head) {
      const std::int64_t kv_head = head / group;
      const auto qh = rows_view(q, tq, shape, b, head);
      const auto kh = head_view(k, shape, b, kv_head);
      const auto vh = head_view(v, shape, b, kv_head);
      const auto doh = rows_view(dout, tq, shape, b, head);
      if (probs != nullptr) {
        p = probs->middleRows((b * shape.q_heads + head) * tq, tq);
      } else {
        positioned_softmax(qh, kh, q_positions, scale, p);
      }
      head_view(dv, shape, b, kv_head).noalias() += p.transpose() * doh;
      dp.noalias() = doh * vh.transpose();
      const ColVec row_dot = (dp.array() * p.array()).rowwise().sum().matrix();
      dp = (p.array() * (dp.colwise() - row_dot).array()).matrix();
      rows_view(dq, tq, shape, b, head).noalias() += (dp * kh) * scale;
      head_view(dk, shape, b, kv_head).noalias() += (dp.transpose() * qh) * scale;
    }
  }
}

void attention_forward(const AttentionShape& shape, const ConstMatRef& q, const ConstMatRef& k, const ConstMatRef& v,
                       MatRef out, Mat* probs) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const std::int64_t group = shape.q_heads / shape.kv_heads;
  if (probs != nullptr) {
    probs->resize(shape.batch * shape.q_heads * shape.seq, shape.seq);
  }
  Mat p(shape.seq, shape.seq);
  for (std::int64_t b = 0; b < shape.batch; ++b) {
    for (std::int64_t head = 0; head < shape.q_heads; ++head) {
      const std::int64_t kv_head = head / group;
      causal_softmax(head_view(q, shape, b, head), head_view(k, shape, b, kv_head), scale, p);
      head_view(out, shape, b, head).noalias() = p * head_view(v, shape, b, kv_head);
      if (probs != nullptr) {
        probs->middleRows((b * shape.q_heads + head) * shape.seq, shape.seq) = p;
      }
    }
  }
}

void attention_backward(const AttentionShape& shape, const ConstMatRef& dout, const ConstMatRef& q,
                        const ConstMatRef& k, const ConstMatRef& v, const Mat* probs, MatRef dq, MatRef dk, MatRef dv) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const std::int64_t group = shape.q_heads / shape.kv_heads;
  dq.setZero();
  dk.setZero();
  dv.setZero();
  Mat p(shape.seq, shape.seq);
  Mat dp(shape.seq, shape.seq);
  for (std::int64_t b = 0; b < shape.batch; ++b) {
    for (std::int64_t head = 0; head < shape.q_heads; ++head) {
      const std::int64_t kv_head = head / group;
      const auto qh = head_view(q, shape, b, head);
      const auto kh = head_view(k, shape, b, kv_head);
      const auto vh = head_view(v, shape, b, kv_head);
      const auto doh = head_view(dout, shape, b, head);
      if (probs != nullptr) {
        p = probs->middleRows((b * shape.q_heads + head) * shape.seq, shape.seq);
      } else {
        causal_softmax(qh, kh, scale, p);
      }
      head_view(dv, shape, b, kv_head).noalias() += p.transpose() * doh;
      dp.noalias() = doh * vh.transpose();
      // dS = P o (dP - rowsum(dP o P)); masked entries have P = 0 and so dS = 0.
      const ColVec row_dot = (dp.array() * p.array()).rowwise().sum().matrix();
      dp = (p.array() * (dp.colwise() - row_dot).array()).matrix();
      head_view(dq, shape, b, head).noalias() += (dp * kh) * scale;
      head_view(dk, shape, b, kv_head).noalias() += (dp.transpose() * qh) * scale;
    }
  }
}

} // namespace cuboid::exec::cpu
