// ProcessGroups: the TP, DP and PP sub-communicators of this rank, split from the world by model::RankGrid
// (rank = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))), plus the embedding group {first stage, last stage} that ties
// the word embedding when pp > 1 (Megatron's embedding group).
#pragma once

#include "exec/communicator.hpp"
#include "model/rank_grid.hpp"

#include <memory>

namespace cuboid::exec {

struct ProcessGroups {
  model::RankCoord coord;
  std::unique_ptr<Communicator> tp;
  std::unique_ptr<Communicator> dp;
  std::unique_ptr<Communicator> pp;
  /// First and last pipeline stage ranks with the same (tp, dp) coordinates; a group of one elsewhere.
  std::unique_ptr<Communicator> embedding;
  // --- context parallelism ---
  /// The CP group (same tp, dp, pp coordinates; size cp). With cp > 1, `dp` above is the data-parallel group with
  /// context parallel (dp*cp ranks, key cp_rank + cp*dp_rank): gradients are reduced over it (Megatron).
  std::unique_ptr<Communicator> cp;
  // --- mixture of experts --- (model::RankGrid::ep_group / expert_dp_group; groups of one for dense models)
  /// The EP group: ep consecutive members of the DP group (position in it: dp_rank % ep), which exchange tokens.
  std::unique_ptr<Communicator> ep;
  /// The expert-data-parallel group: the dp/ep DP members holding the same experts, which reduce their gradients.
  std::unique_ptr<Communicator> expert_dp;
};

/// Collective over `world`; world.size() must equal grid.world_size() (checked by the caller). `head_stage`: the
/// pipeline stage holding the output layer (-1: the last; zb-v puts it on stage 0, next to the embedding).
/// `ep_size`: plan.ep (must divide the DP size).
ProcessGroups make_process_groups(Communicator& world, const model::RankGrid& grid, int head_stage = -1,
                                  int ep_size = 1);

} // namespace cuboid::exec
