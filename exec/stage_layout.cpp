// Layer assignment per chunk (see stage_layout.hpp for the equation and example).
#include "exec/stage_layout.hpp"

#include "model/errors.hpp"
#include "model/schedule.hpp"

#include <fmt/format.h>

namespace cuboid::exec {


std::vector<ChunkLayout> chunk_layouts(const model::Plan& plan, std::int64_t num_layers, int stage) {
  std::vector<ChunkLayout> chunks(static_cast<std::size_t>(plan.vp));
  const auto total = static_cast<int>(num_layers);
  if (plan.vp == 1) {
    const std::vector<int> counts = model::layers_per_stage(plan, num_layers);
    int first = 0;
    for (int s = 0; s < stage; ++s) {
      first += counts[static_cast<std::size_t>(s)];
    }
    chunks[0] = {first, counts[static_cast<std::size_t>(stage)], stage == 0, stage == plan.pp - 1};
    return chunks;
  }
  if (total % (plan.pp * plan.vp) != 0) {
    throw InfeasibleError(fmt::format("plan.vp: {} layers cannot be split into pp ({}) x vp ({}) equal chunks",
                                      total, plan.pp, plan.vp));
  }
  const int per_chunk = total / (plan.pp * plan.vp);
  for (int c = 0; c < plan.vp; ++c) {
    const int virtual_stage = model::virtual_stage_of(plan, stage, c); // zb-v: V shape
    chunks[static_cast<std::size_t>(c)] = {virtual_stage * per_chunk, per_chunk, virtual_stage == 0,
                                           virtual_stage == plan.pp * plan.vp - 1};
  }
  return chunks;
}

} // namespace cuboid::exec
