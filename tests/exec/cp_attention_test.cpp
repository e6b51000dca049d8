// Context-parallel attention kernel (exec/cpu/attention.hpp attention_forward_cp / attention_backward_cp): each CP
// rank's queries (load-balanced chunks i and 2cp-1-i) against the whole sequence's K/V must give exactly the rows
// of the unsplit causal attention, and the ranks' partial dK/dV must sum to the unsplit gradients.
#include "exec/cpu/attention.hpp"

#include <catch2/catch.hpp>

#include <random>

namespace cuboid::exec::cpu {
namespace {

Mat random_mat(Eigen::Index rows, Eigen::Index cols, std::mt19937& gen) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Mat m(rows, cols);
  for (Eigen::Index idx = 0; idx < m.size(); ++idx) {
    m.data()[idx] = dist(gen);
  }
  return m;
}

// Positions of CP rank `rank` (the load-balanced split): chunk rank, then chunk 2cp-1-rank, each T/2cp long.
std::vector<std::int64_t> positions_of(std::int64_t seq, int cp, int rank) {
  const std::int64_t chunk = seq / (2 * cp);
  std::vector<std::int64_t> out;
  for (const std::int64_t which : {std::int64_t{rank}, std::int64_t{2 * cp - 1 - rank}}) {
    for (std::int64_t t = 0; t < chunk; ++t) {
      out.push_back(which * chunk + t);
    }
  }
  return out;
}

// Rows t*B + b of `full` for the given positions (a rank's rows in [s, b] order).
Mat rows_at(const Mat& full, const std::vector<std::int64_t>& positions, std::int64_t batch) {
  Mat out(static_cast<Eigen::Index>(positions.size()) * batch, full.cols());
  for (std::size_t idx = 0; idx < positions.size(); ++idx) {
    for (std::int64_t b = 0; b < batch; ++b) {
      out.row(static_cast<Eigen::Index>(idx) * batch + b) = full.row(positions[idx] * batch + b);
    }
  }
  return out;
}

} // namespace

TEST_CASE("exec::cpu::attention_forward_cp: CP ranks reproduce the unsplit causal attention", "[exec][cp]") {
  const int cp = GENERATE(2, 4);
  const std::int64_t batch = GENERATE(1, 2);
  const AttentionShape shape{16, batch, 4, 2, 8}; // T = 16, GQA 4 query heads on 2 KV heads, D = 8
  std::mt19937 gen(42);
  const Eigen::Index rows = shape.seq * batch;
  const Mat q = random_mat(rows, shape.q_heads * shape.head_dim, gen);
  const Mat k = random_mat(rows, shape.kv_heads * shape.head_dim, gen);
  const Mat v = random_mat(rows, shape.kv_heads * shape.head_dim, gen);
  const Mat dout = random_mat(rows, shape.q_heads * shape.head_dim, gen);
  Mat out(rows, q.cols());
  attention_forward(shape, q, k, v, out, nullptr);
  Mat dq(rows, q.cols());
  Mat dk(rows, k.cols());
  Mat dv(rows, v.cols());
  attention_backward(shape, dout, q, k, v, nullptr, dq, dk, dv);

  Mat dk_sum = Mat::Zero(rows, k.cols());
  Mat dv_sum = Mat::Zero(rows, v.cols());
  const bool keep_probs = GENERATE(false, true);
  for (int rank = 0; rank < cp; ++rank) {
    const std::vector<std::int64_t> positions = positions_of(shape.seq, cp, rank);
    const Mat q_local = rows_at(q, positions, batch);
    const Mat dout_local = rows_at(dout, positions, batch);
    Mat out_local(q_local.rows(), q_local.cols());
    Mat probs;
    attention_forward_cp(shape, positions, q_local, k, v, out_local, keep_probs ? &probs : nullptr);
    REQUIRE((out_local - rows_at(out, positions, batch)).cwiseAbs().maxCoeff() < 1e-5f);
    Mat dq_local(q_local.rows(), q_local.cols());
    Mat dk_part(rows, k.cols());
    Mat dv_part(rows, v.cols());
    attention_backward_cp(shape, positions, dout_local, q_local, k, v, keep_probs ? &probs : nullptr, dq_local,
                          dk_part, dv_part);
    REQUIRE((dq_local - rows_at(dq, positions, batch)).cwiseAbs().maxCoeff() < 1e-5f);
    dk_sum += dk_part;
    dv_sum += dv_part;
  }
  REQUIRE((dk_sum - dk).cwiseAbs().maxCoeff() < 1e-4f);
  REQUIRE((dv_sum - dv).cwiseAbs().maxCoeff() < 1e-4f);
}

} // namespace cuboid::exec::cpu
