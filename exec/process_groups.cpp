// Sub-communicators by color = index of the group, key = position inside it (all in the Megatron rank order).
#include "exec/process_groups.hpp"

namespace cuboid::exec {

ProcessGroups make_process_groups(Communicator& world, const model::RankGrid& grid, int head_stage) {
  ProcessGroups groups;
  const int rank = world.rank();
  const model::RankCoord c = grid.coord_of(rank);
  const int tp = grid.get_tp_size();
  const int dp = grid.get_dp_size();
  const int pp = grid.get_pp_size();
  groups.coord = c;
  groups.tp = world.split(c.dp_rank + dp * c.pp_rank, c.tp_rank);
  groups.dp = world.split(c.tp_rank + tp * c.pp_rank, c.dp_rank);
  groups.pp = world.split(c.tp_rank + tp * c.dp_rank, c.pp_rank);
  const bool end_stage = c.pp_rank == 0 || c.pp_rank == (head_stage < 0 ? pp - 1 : head_stage);
  // Colors 0 .. tp*dp-1 are the embedding groups; every other rank gets a group of its own.
  const int color = end_stage ? c.tp_rank + tp * c.dp_rank : tp * dp + rank;
  groups.embedding = world.split(color, c.pp_rank);
  return groups;
}

} // namespace cuboid::exec
