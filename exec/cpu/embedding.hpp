// Vocab-parallel token embedding (Megatron VocabParallelEmbedding): each TP rank holds rows
// [vocab_start, vocab_start + V/tp) of the (V, C) table; tokens outside that range give zero rows, and the caller
// sums the partial results over the TP group (all-reduce, or reduce-scatter with sequence parallelism).
// Learned position embeddings add row t of a (T, C) table to every token at position t.
#pragma once

#include "exec/cpu/tensor.hpp"

#include <cstdint>
#include <span>

namespace cuboid::exec::cpu {

/// out (N, C) overwritten: out.row(r) = table.row(tokens[r] - vocab_start) if in range, else 0.
void embedding_forward(std::span<const std::int32_t> tokens, const ConstMatRef& table, std::int64_t vocab_start,
                       MatRef out);
/// dtable (Vl, C) += scatter of dout rows for in-range tokens.
void embedding_backward(std::span<const std::int32_t> tokens, const ConstMatRef& dout, std::int64_t vocab_start,
                        MatRef dtable);

/// x (n, C) += pos.row((first_row + r) / batch) for each local row r ([s, b] layout: row = t * B + b).
void position_embedding_forward(const ConstMatRef& pos, std::int64_t first_row, std::int64_t batch, MatRef x);
/// dpos += the rows of dx at their positions.
void position_embedding_backward(const ConstMatRef& dx, std::int64_t first_row, std::int64_t batch, MatRef dpos);

} // namespace cuboid::exec::cpu
