// Sub-communicators by color = index of the group, key = position inside it (all in the Megatron rank order).
#include "exec/process_groups.hpp"

#include <algorithm>

namespace cuboid::exec {

ProcessGroups make_process_groups(Communicator& world, const model::RankGrid& grid, int head_stage, int ep_size) {
  ProcessGroups groups;
  const int rank = world.rank();
  const model::RankCoord c = grid.coord_of(rank);
  const int tp = grid.get_tp_size();
  const int cp = grid.get_cp_size();
  const int dp = grid.get_dp_size();
  const int pp = grid.get_pp_size();
  groups.coord = c;
  // With cp = 1 (cp_rank = 0) these are the 3D colors and keys.
  groups.tp = world.split(c.cp_rank + cp * (c.dp_rank + dp * c.pp_rank), c.tp_rank);
  groups.dp = world.split(c.tp_rank + tp * c.pp_rank, c.cp_rank + cp * c.dp_rank); // dp*cp ranks
  groups.pp = world.split(c.tp_rank + tp * (c.cp_rank + cp * c.dp_rank), c.pp_rank);
  // The head's stage is the last one, or head_stage when given (zero-bubble V: stage 0).
  const bool end_stage = c.pp_rank == 0 || c.pp_rank == (head_stage < 0 ? pp - 1 : head_stage);
  // Colors 0 .. tp*cp*dp-1 are the embedding groups; every other rank gets a group of its own.
  const int color = end_stage ? c.tp_rank + tp * (c.cp_rank + cp * c.dp_rank) : tp * cp * dp + rank;
  groups.embedding = world.split(color, c.pp_rank);
  groups.cp = world.split(c.tp_rank + tp * (c.dp_rank + dp * c.pp_rank), c.cp_rank);
  // --- mixture of experts --- color: the group's lowest world rank (groups partition the world), key: position.
  const auto split_by = [&](const std::vector<int>& members) {
    const auto pos = std::find(members.begin(), members.end(), rank) - members.begin();
    return world.split(*std::min_element(members.begin(), members.end()), static_cast<int>(pos));
  };
  groups.ep = split_by(grid.ep_group(rank, ep_size));
  groups.expert_dp = split_by(grid.expert_dp_group(rank, ep_size));
  return groups;
}

} // namespace cuboid::exec
