// CostModel: how long an op, a compute block or an isolated collective takes on a given cluster.
// Compute time = max(FLOPs / (peak * eff(shape)), bytes / (HBM bw * hbm_eff)) + launch overhead (DESIGN.md "Costs");
// communication = alpha + bytes / beta per step of the collective algorithm. Efficiencies come from a CostProfile
// (cost_profile.hpp): a shipped default per GPU or one measured by `cuboid calibrate`.
#pragma once

#include "model/cost_profile.hpp"
#include "model/gpu_spec.hpp"
#include "model/plan.hpp"
#include "model/task_graph.hpp"

namespace cuboid::model {

/// A link class as the simulator sees it: effective bandwidth per GPU per direction, and per-message latency.
struct LinkParams {
  double bw_bytes_per_s = 0.0;
  double latency_s = 0.0;
};

/// Time of one compute block split by cause (sums to total_s).
struct BlockCost {
  double total_s = 0.0;
  double compute_s = 0.0;    // non-recompute compute ops
  double recompute_s = 0.0;  // recomputed forward ops inside backward
  double tp_comm_s = 0.0;    // TP collectives inside the block (exposed: Megatron runs them on the compute stream)
};

class CostModel {
public:
  /// `plan` fixes the precision and the TP group (size, and whether it stays inside a node).
  CostModel(const ClusterSpec& cluster, CostProfile profile, const Plan& plan);

  /// Compute op time (any OpKind but TpCollective) in seconds.
  [[nodiscard]] double op_time_s(const Op& op) const;
  /// Isolated time of a TP collective op (OpKind::TpCollective) on the TP group.
  [[nodiscard]] double tp_collective_time_s(const Op& op) const;
  [[nodiscard]] BlockCost block_cost(const OpBlock& block) const;

  /// Effective links for the simulator (bandwidth already scaled by the profile's achievable fraction).
  [[nodiscard]] LinkParams nvlink() const;
  [[nodiscard]] LinkParams network() const;
  /// Isolated collective over `group_size` ranks on `link`: ring all-reduce = 2(n-1) steps of S/n bytes,
  /// reduce-scatter / all-gather = (n-1) steps (nccl-tests doc/PERFORMANCE.md bus-bandwidth factors).
  [[nodiscard]] double collective_time_s(CollectiveKind kind, double msg_bytes, int group_size,
                                         const LinkParams& link) const;
  /// Optimizer step time on one rank holding `num_params` parameters (memory bound: Adam reads/writes state).
  [[nodiscard]] double optimizer_time_s(double num_params) const;

  [[nodiscard]] const CostProfile& get_profile() const { return profile_; }
  [[nodiscard]] const ClusterSpec& get_cluster() const { return cluster_; }
  [[nodiscard]] double peak_flops_per_s() const { return peak_flops_per_s_; }
  /// Human-readable list of every number that drives the prediction (efficiencies, bandwidths, overlap).
  [[nodiscard]] std::vector<std::string> assumptions() const;

private:
  ClusterSpec cluster_;
  CostProfile profile_;
  Plan plan_;
  double peak_flops_per_s_ = 0.0;
  bool tp_intra_node_ = true;
};

} // namespace cuboid::model
