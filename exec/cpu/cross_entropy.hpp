// Vocab-parallel cross-entropy (Megatron _VocabParallelCrossEntropy): logits are split by vocabulary over the TP
// group; the row max, the sum of exponentials and the target logit are all-reduced so that no rank ever holds the
// full (N, V) logits. With a TP group of one it is the ordinary softmax cross-entropy.
#pragma once

#include "exec/communicator.hpp"
#include "exec/cpu/tensor.hpp"

#include <cstdint>
#include <span>

namespace cuboid::exec::cpu {

/// logits: (N, V/tp) local shard, replaced in place by the softmax probabilities (saved for backward).
/// losses (N) receives -log p(target) per row. Collective over `tp` (three all-reduces).
void vocab_parallel_cross_entropy_forward(MatRef logits, std::span<const std::int32_t> targets,
                                          std::int64_t vocab_start, Communicator& tp, ColVec& losses);
/// dlogits (N, V/tp) = (probs - onehot(target)) * scale, overwritten (scale = dloss/drow, e.g. 1/N).
void vocab_parallel_cross_entropy_backward(const ConstMatRef& probs, std::span<const std::int32_t> targets,
                                           std::int64_t vocab_start, float scale, MatRef dlogits);

} // namespace cuboid::exec::cpu
