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
  // NVLink SHARP (in-switch all-reduce, H100 and later): 0 bandwidth when the link has none. The simulator's flow
  // model may ignore these; collective_time_s() uses them for all-reduces of >= nvls_min_ranks ranks.
  double nvls_bw_bytes_per_s = 0.0;
  double nvls_latency_s = 0.0;
  int nvls_min_ranks = 0;
};

/// Time of one compute block split by cause (sums to total_s).
struct BlockCost {
  double total_s = 0.0;
  double compute_s = 0.0;    // non-recompute compute ops
  double recompute_s = 0.0;  // recomputed forward ops inside backward
  double tp_comm_s = 0.0;    // TP collectives inside the block (exposed: Megatron runs them on the compute stream)
  // --- mixture of experts ---
  double ep_comm_s = 0.0;    // EP all-to-alls inside a MoE block (exposed: the alltoall dispatcher blocks compute)
  // --- context parallelism ---
  double cp_comm_s = 0.0;    // exposed CP communication: the part of the p2p ring exchanges that the overlapped
                             // attention step does not hide, and all of the allgather / a2a collectives
};

class CostModel {
public:
  /// `plan` fixes the precision and the TP group (size, and whether it stays inside a node).
  CostModel(const ClusterSpec& cluster, CostProfile profile, const Plan& plan);

  /// Compute op time in seconds (a TpCollective op returns tp_collective_time_s). The phase picks the attention
  /// efficiency (forward / backward); this overload infers it from the op name ("bwd", "grad" -> backward).
  [[nodiscard]] double op_time_s(const Op& op) const;
  [[nodiscard]] double op_time_s(const Op& op, Phase phase) const;
  /// Fraction of the GEMM peak (FP8 peak when `fp8`) reached by `batch` GEMMs C(m,n) = A(m,k) B(k,n):
  /// the profile's gemm_table when it has one, else the analytic curve documented in cost_model.cpp.
  [[nodiscard]] double gemm_efficiency(double m, double n, double k, double batch, bool fp8) const;
  /// Isolated time of a TP collective op (OpKind::TpCollective) on the TP group.
  [[nodiscard]] double tp_collective_time_s(const Op& op) const;
  [[nodiscard]] BlockCost block_cost(const OpBlock& block) const;
  /// --- mixture of experts --- Isolated time of an EP all-to-all (OpKind::EpCollective, msg_bytes = the rank's
  /// send buffer S) over the plan's EP group as it sits on the nodes (k members per node, n = ep): each rank sends
  /// S/n to every peer, NVLink carries (k-1)/n * S and the NIC (n-k)/n * S concurrently, with (k-1) NVLink and (n-k)
  /// network alphas (NCCL all-to-all = n-1 send/recv pairs; sim/collectives/hierarchical.cpp uses the same phases).
  [[nodiscard]] double ep_collective_time_s(const Op& op) const;
  /// EP group members on one node (k) and nodes spanned, for the EP group of rank 0 (all groups are alike).
  [[nodiscard]] int ep_members_per_node() const { return ep_members_per_node_; }

  /// Effective links for the simulator (bandwidth already scaled by the profile's achievable fraction).
  [[nodiscard]] LinkParams nvlink() const;
  [[nodiscard]] LinkParams network() const;
  /// Isolated collective over `group_size` ranks on `link`: ring all-reduce = 2(n-1) steps of S/n bytes,
  /// reduce-scatter / all-gather = (n-1) steps (nccl-tests doc/PERFORMANCE.md bus-bandwidth factors).
  [[nodiscard]] double collective_time_s(CollectiveKind kind, double msg_bytes, int group_size,
                                         const LinkParams& link) const;
  /// Multi-node all-reduce as NCCL's tree/hierarchical path does it: reduce-scatter inside each node, all-reduce of
  /// S / ranks_per_node across `num_nodes`, all-gather inside the node, pipelined (time = slower phase + alphas).
  [[nodiscard]] double hierarchical_allreduce_time_s(double msg_bytes, int ranks_per_node, int num_nodes) const;
  /// Optimizer step time on one rank holding `num_params` parameters (memory bound: Adam reads/writes state,
  /// OPTIMIZER_BYTES_PER_PARAM in cost_model.cpp).
  [[nodiscard]] double optimizer_time_s(double num_params) const;
  /// --- CPU prediction across models (branch cpux) --- The profile's measured seconds per element of a CPU
  /// backend kernel (CostProfile cpu_*_s_per_element; 0 for CpuKernel::None and when not measured: the op is then
  /// priced by its bytes).
  [[nodiscard]] double cpu_kernel_s_per_element(CpuKernel kernel) const;

  [[nodiscard]] const CostProfile& get_profile() const { return profile_; }
  [[nodiscard]] const ClusterSpec& get_cluster() const { return cluster_; }
  /// Dense peak at the plan's precision (the MFU denominator, as the dgxc recipes use 1979 TF for FP8).
  [[nodiscard]] double peak_flops_per_s() const { return peak_flops_per_s_; }
  [[nodiscard]] bool is_tp_intra_node() const { return tp_intra_node_; }
  // --- context parallelism ---
  /// One ring step of a CpRing op: every CP rank sends msg_bytes to its successor while receiving as many from its
  /// predecessor: latency + bytes / bw of the link (NVLink when tp*cp <= gpus per node, else the network).
  [[nodiscard]] double cp_ring_step_time_s(const Op& op) const;
  /// A CpCollective op (cp_comm_type allgather / a2a): collective_time_s over the cp ranks of the CP group, on
  /// NVLink when tp*cp <= GPUs per node, else on the network.
  [[nodiscard]] double cp_collective_time_s(const Op& op) const;
  [[nodiscard]] bool is_cp_intra_node() const { return cp_intra_node_; }
  /// Human-readable list of every number that drives the prediction (efficiencies, bandwidths, overlap).
  [[nodiscard]] std::vector<std::string> assumptions() const;

private:
  ClusterSpec cluster_;
  CostProfile profile_;
  Plan plan_;
  double peak_flops_per_s_ = 0.0;  // plan precision (FP8 peak for FP8 plans)
  double bf16_flops_per_s_ = 0.0;  // attention and non-GEMM math stay 16-bit
  bool tp_intra_node_ = true;
  int ep_members_per_node_ = 1; // --- mixture of experts ---
  bool cp_intra_node_ = true;   // --- context parallelism ---

  [[nodiscard]] double analytic_gemm_efficiency(double m, double n, double k, double batch, bool fp8) const;
  [[nodiscard]] double table_gemm_efficiency(double m, double n, double k, bool fp8) const;
  [[nodiscard]] double attention_time_s(const Op& op, Phase phase) const;
  [[nodiscard]] double attention_core_time_s(const Op& op, Phase phase) const;
  /// Exposed part of the TP collective block.ops[op_index] (all of it unless plan.tp_comm_overlap).
  [[nodiscard]] double overlapped_tp_comm_s(const OpBlock& block, std::size_t op_index, Phase phase) const;
};

} // namespace cuboid::model
