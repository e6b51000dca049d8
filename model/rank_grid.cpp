// RankGrid implementation: Megatron "tp-cp-dp-pp" order, see rank_grid.hpp for the worked example.
#include "model/rank_grid.hpp"

#include "model/errors.hpp"

#include <algorithm>

namespace cuboid::model {

RankGrid::RankGrid(int tp_size, int dp_size, int pp_size) : RankGrid(tp_size, 1, dp_size, pp_size) {}

RankGrid::RankGrid(int tp_size, int cp_size, int dp_size, int pp_size)
    : tp_(tp_size), dp_(dp_size), pp_(pp_size), cp_(cp_size) {
  CUBOID_ASSERT(tp_ > 0 && cp_ > 0 && dp_ > 0 && pp_ > 0, "rank grid sizes must be positive: tp={} cp={} dp={} pp={}",
                tp_, cp_, dp_, pp_);
}

int RankGrid::rank_of(const RankCoord& coord) const {
  CUBOID_ASSERT(coord.tp_rank >= 0 && coord.tp_rank < tp_ && coord.dp_rank >= 0 && coord.dp_rank < dp_ &&
                    coord.pp_rank >= 0 && coord.pp_rank < pp_ && coord.cp_rank >= 0 && coord.cp_rank < cp_,
                "coordinate out of grid: tp={} cp={} dp={} pp={}", coord.tp_rank, coord.cp_rank, coord.dp_rank,
                coord.pp_rank);
  return coord.tp_rank + tp_ * (coord.cp_rank + cp_ * (coord.dp_rank + dp_ * coord.pp_rank));
}

RankCoord RankGrid::coord_of(int rank) const {
  CUBOID_ASSERT(rank >= 0 && rank < world_size(), "rank {} outside world of {}", rank, world_size());
  RankCoord coord;
  coord.tp_rank = rank % tp_;
  coord.cp_rank = (rank / tp_) % cp_;
  coord.dp_rank = (rank / (tp_ * cp_)) % dp_;
  coord.pp_rank = rank / (tp_ * cp_ * dp_);
  return coord;
}

std::vector<int> RankGrid::tp_group(int rank) const {
  RankCoord coord = coord_of(rank);
  std::vector<int> members;
  members.reserve(static_cast<std::size_t>(tp_));
  for (int tp_rank = 0; tp_rank < tp_; ++tp_rank) {
    coord.tp_rank = tp_rank;
    members.push_back(rank_of(coord));
  }
  return members;
}

std::vector<int> RankGrid::dp_group(int rank) const {
  RankCoord coord = coord_of(rank);
  std::vector<int> members;
  members.reserve(static_cast<std::size_t>(dp_));
  for (int dp_rank = 0; dp_rank < dp_; ++dp_rank) {
    coord.dp_rank = dp_rank;
    members.push_back(rank_of(coord));
  }
  return members;
}

std::vector<int> RankGrid::cp_group(int rank) const {
  RankCoord coord = coord_of(rank);
  std::vector<int> members;
  members.reserve(static_cast<std::size_t>(cp_));
  for (int cp_rank = 0; cp_rank < cp_; ++cp_rank) {
    coord.cp_rank = cp_rank;
    members.push_back(rank_of(coord));
  }
  return members;
}

// cp varies fastest inside the group (the ranks are consecutive multiples of tp apart), so members come out sorted.
std::vector<int> RankGrid::dp_cp_group(int rank) const {
  RankCoord coord = coord_of(rank);
  std::vector<int> members;
  members.reserve(static_cast<std::size_t>(dp_ * cp_));
  for (int dp_rank = 0; dp_rank < dp_; ++dp_rank) {
    for (int cp_rank = 0; cp_rank < cp_; ++cp_rank) {
      coord.dp_rank = dp_rank;
      coord.cp_rank = cp_rank;
      members.push_back(rank_of(coord));
    }
  }
  return members;
}

std::vector<int> RankGrid::pp_group(int rank) const {
  RankCoord coord = coord_of(rank);
  std::vector<int> members;
  members.reserve(static_cast<std::size_t>(pp_));
  for (int pp_rank = 0; pp_rank < pp_; ++pp_rank) {
    coord.pp_rank = pp_rank;
    members.push_back(rank_of(coord));
  }
  return members;
}

namespace {
template <typename GroupOf>
std::vector<std::vector<int>> collect_groups(int world_size, GroupOf group_of) {
  std::vector<std::vector<int>> groups;
  std::vector<bool> seen(static_cast<std::size_t>(world_size), false);
  for (int rank = 0; rank < world_size; ++rank) {
    if (seen[static_cast<std::size_t>(rank)]) {
      continue;
    }
    std::vector<int> members = group_of(rank);
    for (int member : members) {
      seen[static_cast<std::size_t>(member)] = true;
    }
    groups.push_back(std::move(members));
  }
  return groups;
}
} // namespace

std::vector<std::vector<int>> RankGrid::all_tp_groups() const {
  return collect_groups(world_size(), [this](int rank) { return tp_group(rank); });
}
std::vector<std::vector<int>> RankGrid::all_cp_groups() const {
  return collect_groups(world_size(), [this](int rank) { return cp_group(rank); });
}
std::vector<std::vector<int>> RankGrid::all_dp_cp_groups() const {
  return collect_groups(world_size(), [this](int rank) { return dp_cp_group(rank); });
}
std::vector<std::vector<int>> RankGrid::all_dp_groups() const {
  return collect_groups(world_size(), [this](int rank) { return dp_group(rank); });
}
std::vector<std::vector<int>> RankGrid::all_pp_groups() const {
  return collect_groups(world_size(), [this](int rank) { return pp_group(rank); });
}

// --- mixture of experts --- (see rank_grid.hpp for the worked example)
std::vector<int> RankGrid::ep_group(int rank, int ep_size) const {
  const std::vector<int> dp_members = dp_group(rank);
  const int dp_size = static_cast<int>(dp_members.size());
  CUBOID_ASSERT(ep_size > 0 && dp_size % ep_size == 0, "ep={} does not divide dp={}", ep_size, dp_size);
  const auto pos = static_cast<int>(std::find(dp_members.begin(), dp_members.end(), rank) - dp_members.begin());
  const int first = pos / ep_size * ep_size;
  return {dp_members.begin() + first, dp_members.begin() + first + ep_size};
}

std::vector<int> RankGrid::expert_dp_group(int rank, int ep_size) const {
  const std::vector<int> dp_members = dp_group(rank);
  const int dp_size = static_cast<int>(dp_members.size());
  CUBOID_ASSERT(ep_size > 0 && dp_size % ep_size == 0, "ep={} does not divide dp={}", ep_size, dp_size);
  const auto pos = static_cast<int>(std::find(dp_members.begin(), dp_members.end(), rank) - dp_members.begin());
  std::vector<int> members;
  for (int member = pos % ep_size; member < dp_size; member += ep_size) {
    members.push_back(dp_members[static_cast<std::size_t>(member)]);
  }
  return members;
}

std::vector<std::vector<int>> RankGrid::all_ep_groups(int ep_size) const {
  return collect_groups(world_size(), [this, ep_size](int rank) { return ep_group(rank, ep_size); });
}
std::vector<std::vector<int>> RankGrid::all_expert_dp_groups(int ep_size) const {
  return collect_groups(world_size(), [this, ep_size](int rank) { return expert_dp_group(rank, ep_size); });
}

} // namespace cuboid::model
