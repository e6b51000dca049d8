// RankGrid: the TP x CP x DP x PP process grid in Megatron order ("tp-cp-dp-pp": TP varies fastest, then CP (context
// parallelism), then DP, then PP).
//
//   rank = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))
//
// Worked example, tp=2 dp=2 pp=2 (cp=1, 8 ranks):
//   TP groups  {0,1} {2,3} {4,5} {6,7}     (neighbours: inside one node when tp <= gpus per node)
//   DP groups  {0,2} {1,3} {4,6} {5,7}
//   PP groups  {0,4} {1,5} {2,6} {3,7}
// Worked example, tp=2 cp=2 dp=2 pp=1 (8 ranks):
//   TP groups  {0,1} {2,3} {4,5} {6,7}
//   CP groups  {0,2} {1,3} {4,6} {5,7}     (inside one node when tp*cp <= gpus per node)
//   DP groups  {0,4} {1,5} {2,6} {3,7}
//   DP x CP    {0,2,4,6} {1,3,5,7}         (Megatron's "data-parallel group with context parallel": gradients of
//                                           the CP ranks are reduced with those of the DP replicas)
// This matches Megatron-LM's RankGenerator with order "tp-cp-ep-dp-pp" and ep = 1 (megatron/core/parallel_state.py).
#pragma once

#include <vector>

namespace cuboid::model {

struct RankCoord {
  int tp_rank = 0;
  int dp_rank = 0;
  int pp_rank = 0;
  // --- context parallelism ---
  int cp_rank = 0;
  bool operator==(const RankCoord&) const = default;
};

class RankGrid {
public:
  /// cp = 1 (the 3D grid "tp-dp-pp").
  RankGrid(int tp_size, int dp_size, int pp_size);
  /// The 4D grid "tp-cp-dp-pp". Note the argument order follows the rank order.
  RankGrid(int tp_size, int cp_size, int dp_size, int pp_size);

  [[nodiscard]] int get_tp_size() const { return tp_; }
  [[nodiscard]] int get_cp_size() const { return cp_; }
  [[nodiscard]] int get_dp_size() const { return dp_; }
  [[nodiscard]] int get_pp_size() const { return pp_; }
  [[nodiscard]] int world_size() const { return tp_ * cp_ * dp_ * pp_; }

  [[nodiscard]] int rank_of(const RankCoord& coord) const;
  [[nodiscard]] RankCoord coord_of(int rank) const;

  /// Members of the group containing `rank`, in increasing group-rank order.
  [[nodiscard]] std::vector<int> tp_group(int rank) const;
  [[nodiscard]] std::vector<int> cp_group(int rank) const;
  [[nodiscard]] std::vector<int> dp_group(int rank) const;
  [[nodiscard]] std::vector<int> pp_group(int rank) const;
  /// The gradient-reduction group: all ranks with the same tp and pp coordinates (dp*cp members, cp fastest).
  /// Equal to dp_group() when cp = 1.
  [[nodiscard]] std::vector<int> dp_cp_group(int rank) const;

  /// All groups of a kind (each a sorted member list), in order of their lowest rank.
  [[nodiscard]] std::vector<std::vector<int>> all_tp_groups() const;
  [[nodiscard]] std::vector<std::vector<int>> all_cp_groups() const;
  [[nodiscard]] std::vector<std::vector<int>> all_dp_groups() const;
  [[nodiscard]] std::vector<std::vector<int>> all_pp_groups() const;
  [[nodiscard]] std::vector<std::vector<int>> all_dp_cp_groups() const;

  // --- mixture of experts ---
  // Expert-parallel groups are carved out of each DP group, as Megatron-core's expert rank generator does (order
  // "tp-ep-dp-pp", expert tensor parallel = tp): DP-group member j belongs to EP group j / ep (ep consecutive DP
  // ranks) and to expert-data-parallel group j % ep (the dp/ep ranks holding the same experts, which reduce the
  // expert gradients). Worked example, tp=2 dp=4 pp=1, ep=2:
  //   DP groups        {0,2,4,6} {1,3,5,7}
  //   EP groups        {0,2} {4,6} {1,3} {5,7}
  //   expert-DP groups {0,4} {2,6} {1,5} {3,7}
  // Precondition: ep_size > 0 divides the DP size (validate(plan) checks it).
  [[nodiscard]] std::vector<int> ep_group(int rank, int ep_size) const;
  [[nodiscard]] std::vector<int> expert_dp_group(int rank, int ep_size) const;
  [[nodiscard]] std::vector<std::vector<int>> all_ep_groups(int ep_size) const;
  [[nodiscard]] std::vector<std::vector<int>> all_expert_dp_groups(int ep_size) const;

private:
  int tp_;
  int dp_;
  int pp_;
  int cp_ = 1;
};

} // namespace cuboid::model
