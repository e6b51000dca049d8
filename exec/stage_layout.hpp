// StageLayout: which layers, and whether the embedding and the output head, live in each model chunk of a pipeline
// stage. Megatron's interleaved assignment: with pp stages and vp chunks per stage, chunk c of stage s is virtual
// stage v = c * pp + s and holds layers v * Lc .. v * Lc + Lc - 1 (Lc = L / (pp * vp)).
// Worked example, L = 8, pp = 2, vp = 2 (Lc = 2): stage 0 holds chunks {L0 L1} and {L4 L5}; stage 1 {L2 L3}, {L6 L7}.
// With vp = 1 the per-stage counts come from the plan (uneven first/last stages allowed).
#pragma once

#include "model/plan.hpp"

#include <cstdint>
#include <vector>

namespace cuboid::exec {

struct ChunkLayout {
  int first_layer = 0;
  int num_layers = 0;
  bool has_embedding = false; // virtual stage 0
  bool has_head = false;      // last virtual stage: final norm, output layer, loss
};

/// Layout of every chunk (size plan.vp) of pipeline stage `stage`.
std::vector<ChunkLayout> chunk_layouts(const model::Plan& plan, std::int64_t num_layers, int stage);

} // namespace cuboid::exec
