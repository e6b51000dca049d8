// Gradient checks of every CPU op against central finite differences: each op's output is contracted with a fixed
// random weight R (loss = sum(out o R), accumulated in double), so d loss / d out = R is the backward input.
#include "grad_check.hpp"

#include "exec/cpu/activation.hpp"
#include "exec/cpu/adamw.hpp"
#include "exec/cpu/attention.hpp"
#include "exec/cpu/cross_entropy.hpp"
#include "exec/cpu/embedding.hpp"
#include "exec/cpu/linear.hpp"
#include "exec/cpu/moe.hpp"
#include "exec/cpu/norm.hpp"
#include "exec/cpu/rope.hpp"
#include "exec/init.hpp"
#include "exec/local_communicator.hpp"

#include <cmath>
#include <vector>

namespace cuboid::exec {
namespace {

using cpu::Mat;
using test::check_gradient;

Mat random_mat(Eigen::Index rows, Eigen::Index cols, std::uint64_t key, float scale = 1.0f) {
  Mat m(rows, cols);
  for (Eigen::Index idx = 0; idx < m.size(); ++idx) {
    m.data()[idx] = scale * static_cast<float>(standard_normal(key, static_cast<std::uint64_t>(idx)));
  }
  return m;
}

double contract(const Mat& out, const Mat& r) {
  double sum = 0.0;
  for (Eigen::Index idx = 0; idx < out.size(); ++idx) {
    sum += static_cast<double>(out.data()[idx]) * static_cast<double>(r.data()[idx]);
  }
  return sum;
}

std::span<float> span_of(Mat& m) { return {m.data(), static_cast<std::size_t>(m.size())}; }
std::span<const float> cspan_of(const Mat& m) { return {m.data(), static_cast<std::size_t>(m.size())}; }

TEST_CASE("exec::cpu::layer_norm: gradient check", "[exec]") {
  Mat x = random_mat(5, 8, 1);
  Mat w = random_mat(1, 8, 2);
  Mat b = random_mat(1, 8, 3);
  const Mat r = random_mat(5, 8, 4);
  const auto loss = [&] {
    Mat y(5, 8);
    cpu::ColVec mean, rstd;
    cpu::layer_norm_forward(x, w, b, y, mean, rstd);
    return contract(y, r);
  };
  Mat y(5, 8);
  cpu::ColVec mean, rstd;
  cpu::layer_norm_forward(x, w, b, y, mean, rstd);
  Mat dx = Mat::Zero(5, 8);
  Mat dw = Mat::Zero(1, 8);
  Mat db = Mat::Zero(1, 8);
  cpu::layer_norm_backward(r, x, w, mean, rstd, dx, dw, db);
  check_gradient("dx", span_of(x), cspan_of(dx), loss);
  check_gradient("dw", span_of(w), cspan_of(dw), loss);
  check_gradient("db", span_of(b), cspan_of(db), loss);
}

TEST_CASE("exec::cpu::rms_norm: gradient check", "[exec]") {
  Mat x = random_mat(4, 6, 5);
  Mat w = random_mat(1, 6, 6);
  const Mat r = random_mat(4, 6, 7);
  const auto loss = [&] {
    Mat y(4, 6);
    cpu::ColVec rstd;
    cpu::rms_norm_forward(x, w, y, rstd);
    return contract(y, r);
  };
  Mat y(4, 6);
  cpu::ColVec rstd;
  cpu::rms_norm_forward(x, w, y, rstd);
  Mat dx = Mat::Zero(4, 6);
  Mat dw = Mat::Zero(1, 6);
  cpu::rms_norm_backward(r, x, w, rstd, dx, dw);
  check_gradient("dx", span_of(x), cspan_of(dx), loss);
  check_gradient("dw", span_of(w), cspan_of(dw), loss);
}

TEST_CASE("exec::cpu::linear: gradient check", "[exec]") {
  Mat x = random_mat(5, 4, 8);
  Mat w = random_mat(4, 3, 9);
  Mat b = random_mat(1, 3, 10);
  const Mat r = random_mat(5, 3, 11);
  const auto loss = [&] {
    Mat y(5, 3);
    cpu::linear_forward(x, w, b.data(), y);
    return contract(y, r);
  };
  Mat dx(5, 4);
  Mat dw = Mat::Zero(4, 3);
  Mat db = Mat::Zero(1, 3);
  cpu::linear_backward(r, x, w, dx, dw, db.data());
  check_gradient("dx", span_of(x), cspan_of(dx), loss);
  check_gradient("dw", span_of(w), cspan_of(dw), loss);
  check_gradient("db", span_of(b), cspan_of(db), loss);
}

TEST_CASE("exec::cpu::gelu and swiglu: gradient check", "[exec]") {
  SECTION("gelu") {
    Mat x = random_mat(3, 7, 12, 2.0f);
    const Mat r = random_mat(3, 7, 13);
    const auto loss = [&] {
      Mat y(3, 7);
      cpu::gelu_forward(x, y);
      return contract(y, r);
    };
    Mat dx(3, 7);
    cpu::gelu_backward(r, x, dx);
    check_gradient("dx", span_of(x), cspan_of(dx), loss);
  }
  SECTION("swiglu") {
    Mat gate = random_mat(3, 5, 14, 2.0f);
    Mat up = random_mat(3, 5, 15);
    const Mat r = random_mat(3, 5, 16);
    const auto loss = [&] {
      Mat y(3, 5);
      cpu::swiglu_forward(gate, up, y);
      return contract(y, r);
    };
    Mat dgate(3, 5);
    Mat dup(3, 5);
    cpu::swiglu_backward(r, gate, up, dgate, dup);
    check_gradient("dgate", span_of(gate), cspan_of(dgate), loss);
    check_gradient("dup", span_of(up), cspan_of(dup), loss);
  }
}

// --- mixture of experts ---
// Gates g = softmax over the K chosen logits; loss = sum_slots g * R. The finite-difference step stays well below
// the smallest top-k margin of the logits (checked), so no perturbation changes which experts are chosen.
TEST_CASE("exec::cpu::router_topk: gradient check", "[exec]") {
  const int top_k = GENERATE(1, 2, 3);
  constexpr float STEP = 1e-2f;
  Mat logits = random_mat(6, 5, 40, 2.0f);
  REQUIRE(cpu::router_topk_margin(logits, top_k) > 4.0 * static_cast<double>(STEP));
  const Mat r = random_mat(6, top_k, 41);
  const auto loss = [&] {
    cpu::TopKRouting routing;
    cpu::router_topk_forward(logits, top_k, routing);
    double sum = 0.0;
    for (std::size_t slot = 0; slot < routing.gate.size(); ++slot) {
      sum += static_cast<double>(routing.gate[slot]) * static_cast<double>(r.data()[slot]);
    }
    return sum;
  };
  cpu::TopKRouting routing;
  cpu::router_topk_forward(logits, top_k, routing);
  Mat dlogits(6, 5);
  cpu::router_topk_backward(routing, std::span<const float>(r.data(), static_cast<std::size_t>(r.size())), dlogits);
  check_gradient("dlogits", span_of(logits), cspan_of(dlogits), loss, STEP);
  // Unchosen experts get no gradient.
  for (Eigen::Index token = 0; token < 6; ++token) {
    int nonzero = 0;
    for (Eigen::Index expert = 0; expert < 5; ++expert) {
      nonzero += dlogits(token, expert) != 0.0f ? 1 : 0;
    }
    CHECK(nonzero <= top_k);
  }
}

// Choice order: descending logit, equal logits by the lower expert index; the gates are the softmax of the chosen
// logits, so they sum to 1, and equal logits get equal gates.
TEST_CASE("exec::cpu::router_topk: choice, tie-break and gates", "[exec]") {
  Mat logits(3, 4);
  logits << 1.0f, 3.0f, 3.0f, 0.0f, //
      2.0f, 2.0f, 2.0f, 2.0f,       //
      -1.0f, 0.5f, 4.0f, 0.25f;
  cpu::TopKRouting routing;
  cpu::router_topk_forward(logits, 2, routing);
  CHECK(routing.expert == std::vector<int>{1, 2, 0, 1, 2, 1});
  CHECK_THAT(static_cast<double>(routing.gate[0]), Catch::Matchers::WithinAbs(0.5, 1e-7));
  CHECK_THAT(static_cast<double>(routing.gate[2]), Catch::Matchers::WithinAbs(0.5, 1e-7));
  // Token 2: softmax(4, 0.5) = (1 / (1 + e^-3.5), e^-3.5 / (1 + e^-3.5)).
  CHECK_THAT(static_cast<double>(routing.gate[4]), Catch::Matchers::WithinRel(1.0 / (1.0 + std::exp(-3.5)), 1e-6));
  CHECK_THAT(static_cast<double>(routing.gate[4] + routing.gate[5]), Catch::Matchers::WithinAbs(1.0, 1e-6));
  // Margins: token 0 ties at the boundary for top-1 (3 vs 3), token 1 everywhere; top-3 of token 2: 0.25 - (-1).
  CHECK(cpu::router_topk_margin(logits, 1) == 0.0);
  CHECK(cpu::router_topk_margin(logits.bottomRows(1), 3) == 1.25);
  CHECK(std::isinf(cpu::router_topk_margin(logits, 4)));
}

TEST_CASE("exec::cpu::attention: gradient check (causal, GQA, stored and recomputed probabilities)", "[exec]") {
  // T = 5 tokens, B = 2 sequences, 4 query heads sharing 2 KV heads, head dim 3; rows in [s, b] order.
  const cpu::AttentionShape shape{5, 2, 4, 2, 3};
  const Eigen::Index rows = 10;
  Mat q = random_mat(rows, 12, 17);
  Mat k = random_mat(rows, 6, 18);
  Mat v = random_mat(rows, 6, 19);
  const Mat r = random_mat(rows, 12, 20);
  const auto loss = [&] {
    Mat out(rows, 12);
    cpu::attention_forward(shape, q, k, v, out, nullptr);
    return contract(out, r);
  };
  const bool keep_probs = GENERATE(true, false);
  Mat out(rows, 12);
  Mat probs;
  cpu::attention_forward(shape, q, k, v, out, keep_probs ? &probs : nullptr);
  Mat dq(rows, 12);
  Mat dk(rows, 6);
  Mat dv(rows, 6);
  cpu::attention_backward(shape, r, q, k, v, keep_probs ? &probs : nullptr, dq, dk, dv);
  check_gradient("dq", span_of(q), cspan_of(dq), loss);
  check_gradient("dk", span_of(k), cspan_of(dk), loss);
  check_gradient("dv", span_of(v), cspan_of(dv), loss);

  SECTION("causality: the first token's output depends on the first token only") {
    Mat out2(rows, 12);
    Mat v2 = v;
    v2.bottomRows(rows - 2).setConstant(100.0f); // change every token after t = 0 (rows 0, 1 are t = 0)
    cpu::attention_forward(shape, q, k, v2, out2, nullptr);
    CHECK(out2.topRows(2).isApprox(out.topRows(2)));
  }
}

TEST_CASE("exec::cpu::rope: gradient check and norm preservation", "[exec]") {
  // T = 3, B = 2, 2 heads of dimension 4. A rotation keeps each pair's length, so row norms are unchanged.
  Mat x = random_mat(6, 8, 30);
  const Mat r = random_mat(6, 8, 31);
  const auto loss = [&] {
    Mat y = x;
    cpu::rope_forward(y, 2, 4);
    return contract(y, r);
  };
  Mat y = x;
  cpu::rope_forward(y, 2, 4);
  CHECK(y.rowwise().norm().isApprox(x.rowwise().norm()));
  CHECK(y.topRows(2).isApprox(x.topRows(2))); // position 0: angle 0
  Mat dx = r;
  cpu::rope_backward(dx, 2, 4);
  check_gradient("dx", span_of(x), cspan_of(dx), loss);
}

TEST_CASE("exec::cpu::embedding: gradient check (vocab shard, positions)", "[exec]") {
  // Vocab shard rows [4, 8) of a 12-token vocabulary; tokens outside give zero rows and no gradient.
  Mat table = random_mat(4, 3, 21);
  Mat pos = random_mat(3, 3, 22);
  const std::vector<std::int32_t> tokens{5, 1, 7, 4, 11, 6}; // T = 3, B = 2
  const Mat r = random_mat(6, 3, 23);
  const auto loss = [&] {
    Mat out(6, 3);
    cpu::embedding_forward(tokens, table, 4, out);
    cpu::position_embedding_forward(pos, 0, 2, out);
    return contract(out, r);
  };
  Mat dtable = Mat::Zero(4, 3);
  Mat dpos = Mat::Zero(3, 3);
  cpu::embedding_backward(tokens, r, 4, dtable);
  cpu::position_embedding_backward(r, 0, 2, dpos);
  check_gradient("dtable", span_of(table), cspan_of(dtable), loss);
  check_gradient("dpos", span_of(pos), cspan_of(dpos), loss);
  Mat out(6, 3);
  cpu::embedding_forward(tokens, table, 4, out);
  CHECK(out.row(1).isZero());
  CHECK(out.row(4).isZero());
}

TEST_CASE("exec::cpu::vocab_parallel_cross_entropy: gradient check and value", "[exec]") {
  LocalCommunicator tp;
  Mat logits = random_mat(4, 6, 24, 3.0f);
  const std::vector<std::int32_t> targets{0, 5, 2, 2};
  const auto loss = [&] {
    Mat work = logits;
    cpu::ColVec losses;
    cpu::vocab_parallel_cross_entropy_forward(work, targets, 0, tp, losses);
    return static_cast<double>(losses.sum());
  };
  Mat probs = logits;
  cpu::ColVec losses;
  cpu::vocab_parallel_cross_entropy_forward(probs, targets, 0, tp, losses);
  // Reference: -log softmax computed in double.
  for (Eigen::Index row = 0; row < 4; ++row) {
    double denom = 0.0;
    for (Eigen::Index col = 0; col < 6; ++col) {
      denom += std::exp(static_cast<double>(logits(row, col)));
    }
    const double expected = std::log(denom) - static_cast<double>(logits(row, targets[static_cast<std::size_t>(row)]));
    CHECK_THAT(static_cast<double>(losses(row)), Catch::Matchers::WithinRel(expected, 1e-5));
  }
  Mat dlogits(4, 6);
  cpu::vocab_parallel_cross_entropy_backward(probs, targets, 0, 1.0f, dlogits);
  check_gradient("dlogits", span_of(logits), cspan_of(dlogits), loss);
}

TEST_CASE("exec::cpu::adamw: one step matches the closed form", "[exec]") {
  // Step 1 with bias correction: mhat = g, vhat = g^2, so p -= lr * (g / (|g| + eps) + wd * p).
  std::vector<float> p{1.0f, -2.0f, 0.5f};
  const std::vector<float> g{0.1f, -0.3f, 0.0f};
  std::vector<float> m(3, 0.0f);
  std::vector<float> v(3, 0.0f);
  cpu::AdamWConfig config;
  config.lr = 0.01f;
  config.weight_decay = 0.1f;
  cpu::adamw_update(p, g, m, v, 1, config, config.weight_decay, 1.0f);
  CHECK_THAT(p[0], Catch::Matchers::WithinRel(1.0f - 0.01f * (1.0f + 0.1f), 1e-5f));
  CHECK_THAT(p[1], Catch::Matchers::WithinRel(-2.0f - 0.01f * (-1.0f - 0.2f), 1e-5f));
  CHECK_THAT(p[2], Catch::Matchers::WithinRel(0.5f - 0.01f * 0.05f, 1e-5f));
}

} // namespace
} // namespace cuboid::exec
