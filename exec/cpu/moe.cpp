// Top-k router with softmax over the chosen logits (see moe.hpp), forward and backward.
#include "exec/cpu/moe.hpp"

#include "model/errors.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace cuboid::exec::cpu {

namespace {
// Expert order of one token: descending logit, ties by ascending index (a strict weak order, so the choice never
// depends on the sort algorithm).
std::vector<int> ranked_experts(const ConstMatRef& logits, Eigen::Index row) {
  std::vector<int> order(static_cast<std::size_t>(logits.cols()));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    const float la = logits(row, a);
    const float lb = logits(row, b);
    return la > lb || (la == lb && a < b);
  });
  return order;
}
} // namespace

void router_topk_forward(const ConstMatRef& logits, int top_k, TopKRouting& routing) {
  CUBOID_ASSERT(top_k >= 1 && top_k <= logits.cols(), "top_k {} for {} experts", top_k, logits.cols());
  const auto tokens = static_cast<std::size_t>(logits.rows());
  const auto k_count = static_cast<std::size_t>(top_k);
  routing.top_k = top_k;
  routing.expert.assign(tokens * k_count, 0);
  routing.gate.assign(tokens * k_count, 0.0f);
  for (std::size_t token = 0; token < tokens; ++token) {
    const auto row = static_cast<Eigen::Index>(token);
    const std::vector<int> order = ranked_experts(logits, row);
    // Softmax over the chosen logits, shifted by the largest (the first choice) for range.
    const float top = logits(row, order[0]);
    float sum = 0.0f;
    for (std::size_t k = 0; k < k_count; ++k) {
      const float e = std::exp(logits(row, order[k]) - top);
      routing.expert[token * k_count + k] = order[k];
      routing.gate[token * k_count + k] = e;
      sum += e;
    }
    for (std::size_t k = 0; k < k_count; ++k) {
      routing.gate[token * k_count + k] /= sum;
    }
  }
}

// g = softmax(z) over the chosen logits z: dz_j = g_j (dg_j - sum_i g_i dg_i).
void router_topk_backward(const TopKRouting& routing, std::span<const float> dgate, MatRef dlogits) {
  const auto k_count = static_cast<std::size_t>(routing.top_k);
  CUBOID_ASSERT(dgate.size() == routing.gate.size() &&
                    routing.gate.size() == k_count * static_cast<std::size_t>(dlogits.rows()),
                "router backward: {} gate gradients for {} gates of {} tokens", dgate.size(), routing.gate.size(),
                dlogits.rows());
  dlogits.setZero();
  for (std::size_t token = 0; token < static_cast<std::size_t>(dlogits.rows()); ++token) {
    float dot = 0.0f;
    for (std::size_t k = 0; k < k_count; ++k) {
      dot += routing.gate[token * k_count + k] * dgate[token * k_count + k];
    }
    for (std::size_t k = 0; k < k_count; ++k) {
      const std::size_t slot = token * k_count + k;
      dlogits(static_cast<Eigen::Index>(token), routing.expert[slot]) = routing.gate[slot] * (dgate[slot] - dot);
    }
  }
}

double router_topk_margin(const ConstMatRef& logits, int top_k) {
  double margin = std::numeric_limits<double>::infinity();
  if (top_k >= logits.cols()) {
    return margin;
  }
  for (Eigen::Index row = 0; row < logits.rows(); ++row) {
    const std::vector<int> order = ranked_experts(logits, row);
    const auto k = static_cast<std::size_t>(top_k);
    const double gap = static_cast<double>(logits(row, order[k - 1])) - static_cast<double>(logits(row, order[k]));
    margin = std::min(margin, gap);
  }
  return margin;
}

} // namespace cuboid::exec::cpu
