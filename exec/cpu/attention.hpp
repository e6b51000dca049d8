// Causal self-attention core (softmax(Q K^T / sqrt(D)) V per batch element and head) with grouped-query attention:
// query head h of the local heads uses KV head h / (q_heads / kv_heads). Rows are Megatron's [s, b] order
// (row = t * B + b); columns are head-major (head h occupies columns h*D .. h*D+D-1).
#pragma once

#include "exec/cpu/tensor.hpp"

#include <cstdint>
#include <span>

namespace cuboid::exec::cpu {

struct AttentionShape {
  std::int64_t seq = 0;      // T
  std::int64_t batch = 0;    // B (micro-batch size)
  std::int64_t q_heads = 0;  // heads held by this rank
  std::int64_t kv_heads = 0; // KV groups held by this rank (divides q_heads)
  std::int64_t head_dim = 0; // D
};

/// q: (T*B, Hq*D), k, v: (T*B, Hkv*D), out: (T*B, Hq*D) overwritten. If `probs` is non-null it receives the
/// softmax probabilities, (B*Hq*T, T), for backward; otherwise backward recomputes them (selective recompute).
void attention_forward(const AttentionShape& shape, const ConstMatRef& q, const ConstMatRef& k, const ConstMatRef& v,
                       MatRef out, Mat* probs);
/// dq, dk, dv overwritten. `probs` from forward, or nullptr to recompute them from q and k.
void attention_backward(const AttentionShape& shape, const ConstMatRef& dout, const ConstMatRef& q,
                        const ConstMatRef& k, const ConstMatRef& v, const Mat* probs, MatRef dq, MatRef dk, MatRef dv);

// --- context parallelism ---
/// Attention of this CP rank's queries against the whole sequence's keys (the all-gathered K and V): q has
/// q_positions.size() * B rows, query row tq*B + b sitting at global position q_positions[tq]; k and v have T*B rows in
/// natural order (shape.seq = T). Key j is visible to a query at position p iff j <= p (causal over global positions).
/// probs, if non-null, receives (B*Hq*Tq, T).
void attention_forward_cp(const AttentionShape& shape, std::span<const std::int64_t> q_positions, const ConstMatRef& q,
                          const ConstMatRef& k, const ConstMatRef& v, MatRef out, Mat* probs);
/// dq (Tq*B rows) overwritten; dk, dv (T*B rows) overwritten with this rank's partial gradients (the queries of the
/// other CP ranks add theirs: sum over the CP group).
void attention_backward_cp(const AttentionShape& shape, std::span<const std::int64_t> q_positions,
                           const ConstMatRef& dout, const ConstMatRef& q, const ConstMatRef& k, const ConstMatRef& v,
                           const Mat* probs, MatRef dq, MatRef dk, MatRef dv);

} // namespace cuboid::exec::cpu
