// Mixture-of-experts router op of the CPU backend (no communication; the token dispatch over the EP group is in
// exec/gpt_model_moe.cpp): top-k expert choice per token and its gates, Mixtral-style — the K largest router logits
// are chosen and the gates are the softmax over those K logits only (Megatron-core's default, i.e. without
// --moe-router-pre-softmax; equal to softmax over all E then top-k renormalised to sum 1). No auxiliary loss.
#pragma once

#include "exec/cpu/tensor.hpp"

#include <span>
#include <vector>

namespace cuboid::exec::cpu {

/// The routing of N tokens to K of E experts.
struct TopKRouting {
  int top_k = 0;
  std::vector<int> expert; // (N*K) expert[n*K + k]: token n's k-th choice, by descending logit (tie: lower index)
  std::vector<float> gate; // (N*K) softmax over token n's K chosen logits
};

/// logits: (N, E), 1 <= top_k <= E. Deterministic: equal logits are ranked by expert index (lower first).
void router_topk_forward(const ConstMatRef& logits, int top_k, TopKRouting& routing);
/// dgate: (N*K) gradient of the gates; dlogits: (N, E) overwritten, zero for the experts a token did not choose
/// (top-k selection is piecewise constant: no gradient flows through the choice itself).
void router_topk_backward(const TopKRouting& routing, std::span<const float> dgate, MatRef dlogits);
/// Smallest gap over the N tokens between the K-th and the (K+1)-th largest logit (+infinity when K == E): how far
/// the routing is from a tie that a rounding difference could flip.
[[nodiscard]] double router_topk_margin(const ConstMatRef& logits, int top_k);

} // namespace cuboid::exec::cpu
