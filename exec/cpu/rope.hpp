// Rotary position embedding (Su et al. 2021, RoFormer; the "rotate half" layout of GPT-NeoX / Llama): in every head,
// dimension i < D/2 is paired with i + D/2 and the pair is rotated by angle t * theta^(-2i/D) at position t.
// Rows are in Megatron's [s, b] order (position t = row / B).
#pragma once

#include "exec/cpu/tensor.hpp"

#include <cstdint>

namespace cuboid::exec::cpu {

constexpr float ROPE_THETA = 10000.0f;

/// Rotates x (T*B, heads*D) in place.
void rope_forward(MatRef x, std::int64_t batch, std::int64_t head_dim);
/// Gradient of rope_forward: rotates dx in place by the opposite angles.
void rope_backward(MatRef dx, std::int64_t batch, std::int64_t head_dim);
// --- context parallelism ---
/// The same for a block of rows whose first row is row `first_row` of the whole sequence (position = (first_row +
/// row) / B): a CP rank's sequence chunk.
void rope_forward(MatRef x, std::int64_t batch, std::int64_t head_dim, std::int64_t first_row);
void rope_backward(MatRef dx, std::int64_t batch, std::int64_t head_dim, std::int64_t first_row);

} // namespace cuboid::exec::cpu
