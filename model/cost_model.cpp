// Roofline cost model (DESIGN.md "Costs"): op time = max(FLOPs / (peak * eff), bytes / (HBM bw * hbm_eff))
// + launch overhead, with GEMM efficiency from shape, and alpha-beta ring collectives with nccl-tests bus-bandwidth
// factors. Registered as "roofline+ring"; every number comes from a CostProfile (cost_profile.cpp cites them).
#include "model/cost_model.hpp"

#include "model/errors.hpp"
#include "model/rank_grid.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

namespace cuboid::model {

namespace {

// Megatron-LM mixed-precision Adam, bytes through HBM per parameter per step:
//   grad-norm read of the fp32 main grad (4) + fused Adam: read grad, param, m, v (16) and write param, m, v (12)
//   + copy fp32 main param to the bf16 model param (read 4, write 2) + zeroing the fp32 main grad (4) = 42 B.
// (Megatron-LM megatron/core/optimizer: clip_grads, FusedAdam, _copy_main_params_to_model_params, zero_grad.)
constexpr double OPTIMIZER_BYTES_PER_PARAM = 42.0;
constexpr double OPTIMIZER_KERNELS = 4.0; // grad norm, Adam, param copy, zero grad (multi-tensor launches)


double dense_peak(const GpuSpec& gpu, Precision precision) {
  switch (precision) {
  case Precision::Fp8:
    if (gpu.fp8_flops_per_s <= 0.0) {
      throw InfeasibleError(fmt::format("GPU '{}' has no FP8 tensor cores (fp8 peak = 0): use bf16 or fp16",
                                        gpu.name));
    }
    return gpu.fp8_flops_per_s;
  case Precision::Fp16:
    return gpu.fp16_flops_per_s > 0.0 ? gpu.fp16_flops_per_s : gpu.bf16_flops_per_s;
  case Precision::Bf16:
    break;
  }
  return gpu.bf16_flops_per_s;
}

const char* precision_name(Precision precision) {
  switch (precision) {
  case Precision::Fp8:
    return "fp8";
  case Precision::Fp16:
    return "fp16";
  case Precision::Bf16:
    break;
  }
  return "bf16";
}

bool name_says_backward(const std::string& name) {
  return name.find("bwd") != std::string::npos || name.find("grad") != std::string::npos;
}

bool block_is_backward(const std::string& name) {
  return name.size() >= 3 && name.compare(name.size() - 3, 3, "bwd") == 0;
}

} // namespace

CostModel::CostModel(const ClusterSpec& cluster, CostProfile profile, const Plan& plan)
    : cluster_(cluster), profile_(std::move(profile)), plan_(plan) {
  peak_flops_per_s_ = dense_peak(cluster_.gpu, plan_.precision);
  bf16_flops_per_s_ = dense_peak(cluster_.gpu, plan_.precision == Precision::Fp16 ? Precision::Fp16 : Precision::Bf16);
  tp_intra_node_ = cluster_.gpus_per_node <= 0 || plan_.tp <= cluster_.gpus_per_node;
  // --- mixture of experts --- EP group of rank 0 on the nodes (every EP group has the same shape).
  if (plan_.ep > 1 && plan_.dp % plan_.ep == 0) {
    const std::vector<int> members = RankGrid(plan_.tp, plan_.dp, plan_.pp).ep_group(0, plan_.ep);
    int on_first_node = 0;
    for (const int member : members) {
      on_first_node += cluster_.gpus_per_node <= 0 || cluster_.node_of(member) == cluster_.node_of(0) ? 1 : 0;
    }
    ep_members_per_node_ = on_first_node;
  }
  // CP peers are tp ranks apart (rank order tp-cp-dp-pp): the ring stays in a node when tp*cp GPUs fit in one.
  cp_intra_node_ = cluster_.gpus_per_node <= 0 || plan_.tp * plan_.cp <= cluster_.gpus_per_node;
}

// ---- compute ops
double CostModel::op_time_s(const Op& op) const {
  return op_time_s(op, name_says_backward(op.name) ? Phase::Backward : Phase::Forward);
}

double CostModel::op_time_s(const Op& op, Phase phase) const {
  if (op.kind == OpKind::TpCollective) {
    return tp_collective_time_s(op);
  }
  if (op.kind == OpKind::EpCollective) {
    return ep_collective_time_s(op);
  }
  if (op.kind == OpKind::CpRing) {
    return cp_ring_step_time_s(op);
  }
  if (op.kind == OpKind::CpCollective) {
    return cp_collective_time_s(op);
  }
  // A CPU backend kernel measured by the CPU profile: its per-element time (GPU profiles measure none: bytes below).
  if (const double kernel_s = cpu_kernel_s_per_element(op.cpu_kernel); kernel_s > 0.0) {
    return static_cast<double>(op.m) * kernel_s + profile_.launch_overhead_s;
  }
  const double memory_s = op.hbm_bytes / (cluster_.gpu.hbm_bw_bytes_per_s * profile_.hbm_efficiency);
  double compute_s = 0.0;
  if (op.kind == OpKind::Gemm && op.flops > 0.0) {
    const bool fp8 = plan_.precision == Precision::Fp8;
    const double eff = op.m > 0 && op.n > 0 && op.k > 0
                           ? gemm_efficiency(static_cast<double>(op.m), static_cast<double>(op.n),
                                             static_cast<double>(op.k), static_cast<double>(std::max<std::int64_t>(
                                                                            1, op.batch)),
                                             fp8)
                           : (fp8 ? profile_.gemm_fp8_max_efficiency : profile_.gemm_max_efficiency);
    compute_s = op.flops / (peak_flops_per_s_ * eff);
  } else if (op.kind == OpKind::Attention) {
    return attention_time_s(op, phase);
  }
  // Elementwise, Norm, Embedding, Loss: memory bound (their FLOPs run on CUDA cores far below any limit that binds).
  return std::max(compute_s, memory_s) + profile_.launch_overhead_s;
}

double CostModel::cpu_kernel_s_per_element(CpuKernel kernel) const {
  switch (kernel) {
  case CpuKernel::None:
    return 0.0;
  case CpuKernel::LayerNormFwd:
    return profile_.cpu_layernorm_fwd_s_per_element;
  case CpuKernel::LayerNormBwd:
    return profile_.cpu_layernorm_bwd_s_per_element;
  case CpuKernel::RmsNormFwd:
    return profile_.cpu_rmsnorm_fwd_s_per_element;
  case CpuKernel::RmsNormBwd:
    return profile_.cpu_rmsnorm_bwd_s_per_element;
  case CpuKernel::GeluFwd:
    return profile_.cpu_gelu_fwd_s_per_element;
  case CpuKernel::GeluBwd:
    return profile_.cpu_gelu_bwd_s_per_element;
  case CpuKernel::SwigluFwd:
    return profile_.cpu_swiglu_fwd_s_per_element;
  case CpuKernel::SwigluBwd:
    return profile_.cpu_swiglu_bwd_s_per_element;
  }
  return 0.0;
}

double CostModel::tp_collective_time_s(const Op& op) const {
  if (plan_.tp <= 1) {
    return 0.0;
  }
  return collective_time_s(op.collective, op.msg_bytes, plan_.tp, tp_intra_node_ ? nvlink() : network());
}

// TP communication overlap (Megatron --tp-comm-overlap, Transformer Engine userbuffers; Wang et al., "Overlap
// Communication with Dependent Computation via Decomposition", ASPLOS 2023): a sequence-parallel all-gather is split
// into tp chunks exchanged in a ring while the GEMM that consumes it runs chunk by chunk; a reduce-scatter is
// pipelined behind the GEMM that produces it. One chunk (1/tp of the collective) cannot be hidden (pipeline fill),
// and the rest only as far as the paired GEMM lasts: exposed = c / tp + max(0, c (tp - 1) / tp - t_gemm).
// The all-gather pairs with the next GEMM of the block, a reduce-scatter with the previous one. All-reduces (no
// sequence parallelism) are not overlapped (userbuffers requires sequence parallelism).
// Plan::async_tp_grad_reduce: the input-gradient reduction of a column-parallel linear (the collective right after
// its wgrad GEMM in layer_backward) runs behind that wgrad GEMM: exposed = max(0, c - t_wgrad) (Korthikanti et al.
// 2022 section 6.2: "we overlap all-reduce communication with the linear weight's gradient computation"). Userbuffers
// (tp_comm_overlap) keeps its finer chunked formula for reduce-scatters.
double CostModel::overlapped_tp_comm_s(const OpBlock& block, std::size_t op_index, Phase phase) const {
  const Op& op = block.ops[op_index];
  const double comm_s = tp_collective_time_s(op);
  const bool after_wgrad = op_index > 0 && block.ops[op_index - 1].kind == OpKind::Gemm &&
                           block.ops[op_index - 1].name.ends_with(".wgrad");
  const bool userbuffers = plan_.tp_comm_overlap && plan_.tp > 1 && op.collective != CollectiveKind::AllReduce;
  if (plan_.async_tp_grad_reduce && !userbuffers && after_wgrad && !op.recompute &&
      op.collective != CollectiveKind::AllGather) {
    return std::max(0.0, comm_s - op_time_s(block.ops[op_index - 1], phase));
  }
  if (!userbuffers) {
    return comm_s;
  }
  const bool forward_pair = op.collective == CollectiveKind::AllGather;
  double gemm_s = 0.0;
  for (std::size_t step = 1; step <= block.ops.size(); ++step) {
    if (!forward_pair && step > op_index) {
      break;
    }
    const std::size_t other = forward_pair ? op_index + step : op_index - step;
    if (other >= block.ops.size()) {
      break;
    }
    if (block.ops[other].kind == OpKind::Gemm) {
      gemm_s = op_time_s(block.ops[other], block.ops[other].recompute ? Phase::Forward : phase);
      break;
    }
  }
  const double tp = static_cast<double>(plan_.tp);
  return comm_s / tp + std::max(0.0, comm_s * (tp - 1.0) / tp - gemm_s);
}

// --- context parallelism ---
double CostModel::cp_ring_step_time_s(const Op& op) const {
  if (plan_.cp <= 1 || op.msg_bytes <= 0.0) {
    return 0.0;
  }
  const LinkParams link = cp_intra_node_ ? nvlink() : network();
  CUBOID_ASSERT(link.bw_bytes_per_s > 0.0, "CP ring link bandwidth {}", link.bw_bytes_per_s);
  return link.latency_s + op.msg_bytes / link.bw_bytes_per_s;
}

double CostModel::cp_collective_time_s(const Op& op) const {
  if (plan_.cp <= 1) {
    return 0.0;
  }
  return collective_time_s(op.collective, op.msg_bytes, plan_.cp, cp_intra_node_ ? nvlink() : network());
}

BlockCost CostModel::block_cost(const OpBlock& block) const {
  const Phase phase = block_is_backward(block.name) ? Phase::Backward : Phase::Forward;
  BlockCost cost;
  for (std::size_t op_index = 0; op_index < block.ops.size(); ++op_index) {
    const Op& op = block.ops[op_index];
    if (op.kind == OpKind::TpCollective) {
      cost.tp_comm_s += overlapped_tp_comm_s(block, op_index, phase);
    } else if (op.kind == OpKind::EpCollective) {
      cost.ep_comm_s += ep_collective_time_s(op);
    } else if (op.kind == OpKind::CpRing) {
      // The exchange runs on its own stream behind the attention step that follows it (TE's double-buffered ring):
      // only what that step does not hide is exposed.
      const bool has_next = op_index + 1 < block.ops.size() && block.ops[op_index + 1].kind == OpKind::Attention;
      const double hidden_s =
          has_next ? op_time_s(block.ops[op_index + 1], block.ops[op_index + 1].recompute ? Phase::Forward : phase)
                   : 0.0;
      cost.cp_comm_s += std::max(0.0, cp_ring_step_time_s(op) - hidden_s);
    } else if (op.kind == OpKind::CpCollective) {
      cost.cp_comm_s += cp_collective_time_s(op); // exposed (TE: on the compute stream, before/after the attention)
    } else if (op.recompute) {
      cost.recompute_s += op_time_s(op, Phase::Forward); // recomputation repeats the forward kernels
    } else {
      cost.compute_s += op_time_s(op, phase);
    }
  }
  cost.total_s = cost.compute_s + cost.recompute_s + cost.tp_comm_s + cost.ep_comm_s + cost.cp_comm_s;
  return cost;
}

// --- mixture of experts --- (formula in cost_model.hpp). Recomputed all-to-alls (full recompute) cost the same.
double CostModel::ep_collective_time_s(const Op& op) const {
  if (plan_.ep <= 1 || op.msg_bytes <= 0.0) {
    return 0.0;
  }
  const double n = static_cast<double>(plan_.ep);
  const double k = static_cast<double>(ep_members_per_node_);
  const LinkParams intra = nvlink();
  const LinkParams inter = network();
  const double nvlink_s = k > 1.0 ? (k - 1.0) / n * op.msg_bytes / intra.bw_bytes_per_s : 0.0;
  const double nic_s = n > k ? (n - k) / n * op.msg_bytes / inter.bw_bytes_per_s : 0.0;
  return (k - 1.0) * intra.latency_s + (n - k) * inter.latency_s + std::max(nvlink_s, nic_s);
}

// ---- links and collectives
LinkParams CostModel::nvlink() const {
  const double wire = cluster_.nvlink_bw_bytes_per_s > 0.0 ? cluster_.nvlink_bw_bytes_per_s
                                                           : cluster_.gpu.nvlink_bw_bytes_per_s;
  LinkParams link;
  link.bw_bytes_per_s = wire * profile_.nvlink_efficiency;
  link.latency_s = profile_.nvlink_latency_s > 0.0 ? profile_.nvlink_latency_s : cluster_.nvlink_latency_s;
  if (profile_.nvls_efficiency > 0.0) {
    link.nvls_bw_bytes_per_s = wire * profile_.nvls_efficiency;
    link.nvls_latency_s = profile_.nvls_latency_s;
    link.nvls_min_ranks = static_cast<int>(profile_.nvls_min_ranks);
  }
  return link;
}

LinkParams CostModel::network() const {
  LinkParams link;
  link.bw_bytes_per_s = cluster_.nic_bw_bytes_per_s * profile_.nic_efficiency;
  link.latency_s = profile_.net_latency_s > 0.0 ? profile_.net_latency_s : cluster_.net_latency_s;
  return link;
}

// Ring collectives (NVIDIA/nccl-tests doc/PERFORMANCE.md): all-reduce = 2(n-1) steps moving 2(n-1)/n * S per rank,
// reduce-scatter / all-gather = (n-1) steps moving (n-1)/n * S, so busbw = factor * S / time equals the link's
// effective bandwidth for large S. All-to-all: (n-1) pairwise steps of S/n each. S is the full buffer (all-reduce
// input, all-gather output). NVLS all-reduce (in-switch reduction): each rank sends and receives S once, time =
// nvls_latency + S / nvls_bw; NCCL takes it when faster and the group has >= nvls_min_ranks ranks.
double CostModel::collective_time_s(CollectiveKind kind, double msg_bytes, int group_size,
                                    const LinkParams& link) const {
  if (group_size <= 1 || msg_bytes <= 0.0) {
    return 0.0;
  }
  CUBOID_ASSERT(link.bw_bytes_per_s > 0.0, "link bandwidth {} for a {}-rank collective", link.bw_bytes_per_s,
                group_size);
  const double n = static_cast<double>(group_size);
  if (kind == CollectiveKind::AllReduce) {
    const double ring = 2.0 * (n - 1.0) * link.latency_s + 2.0 * (n - 1.0) / n * msg_bytes / link.bw_bytes_per_s;
    if (link.nvls_bw_bytes_per_s > 0.0 && group_size >= link.nvls_min_ranks) {
      return std::min(ring, link.nvls_latency_s + msg_bytes / link.nvls_bw_bytes_per_s);
    }
    return ring;
  }
  return (n - 1.0) * link.latency_s + (n - 1.0) / n * msg_bytes / link.bw_bytes_per_s;
}

double CostModel::hierarchical_allreduce_time_s(double msg_bytes, int ranks_per_node, int num_nodes) const {
  const LinkParams intra = nvlink();
  const LinkParams inter = network();
  if (num_nodes <= 1) {
    return collective_time_s(CollectiveKind::AllReduce, msg_bytes, ranks_per_node, intra);
  }
  const double local = static_cast<double>(ranks_per_node);
  const double nodes = static_cast<double>(num_nodes);
  const double intra_s = 2.0 * (local - 1.0) / local * msg_bytes / intra.bw_bytes_per_s;
  const double inter_s = 2.0 * (nodes - 1.0) / nodes * (msg_bytes / local) / inter.bw_bytes_per_s;
  const double alphas = 2.0 * (local - 1.0) * intra.latency_s + 2.0 * (nodes - 1.0) * inter.latency_s;
  return std::max(intra_s, inter_s) + alphas;
}

double CostModel::optimizer_time_s(double num_params) const {
  const double bytes = OPTIMIZER_BYTES_PER_PARAM * num_params;
  return bytes / (cluster_.gpu.hbm_bw_bytes_per_s * profile_.hbm_efficiency) +
         OPTIMIZER_KERNELS * profile_.launch_overhead_s;
}

std::vector<std::string> CostModel::assumptions() const {
  const std::string tag = fmt::format("(profile {})", profile_.name);
  const bool fp8 = plan_.precision == Precision::Fp8;
  std::vector<std::string> lines;
  lines.push_back(fmt::format(
      "GEMM efficiency: max {:.3f} of {:.0f} TFLOP/s ({}), half at {:.2f} GFLOP, wave quantisation on {:.0f} SMs{} {}",
      fp8 ? profile_.gemm_fp8_max_efficiency : profile_.gemm_max_efficiency, peak_flops_per_s_ / 1e12,
      precision_name(plan_.precision), profile_.gemm_half_efficiency_flops / 1e9, profile_.num_sms,
      profile_.gemm_table.empty() ? "" : fmt::format("; measured table of {} points", profile_.gemm_table.size()),
      tag));
  lines.push_back(fmt::format("Attention: fwd {:.2f}, bwd {:.2f} of {:.0f} TFLOP/s (16-bit) {}",
                              profile_.attention_efficiency, profile_.attention_bwd_efficiency,
                              bf16_flops_per_s_ / 1e12, tag));
  lines.push_back(fmt::format("HBM: {:.0f} GB/s x {:.2f} = {:.0f} GB/s for memory-bound ops; launch {:.1f} us {}",
                              cluster_.gpu.hbm_bw_bytes_per_s / 1e9, profile_.hbm_efficiency,
                              cluster_.gpu.hbm_bw_bytes_per_s * profile_.hbm_efficiency / 1e9,
                              profile_.launch_overhead_s * 1e6, tag));
  const LinkParams intra = nvlink();
  lines.push_back(fmt::format("NVLink: {:.0f} GB/s x {:.3f} = {:.0f} GB/s effective ring busbw, alpha {:.1f} us/step{} {}",
                              intra.bw_bytes_per_s / profile_.nvlink_efficiency / 1e9, profile_.nvlink_efficiency,
                              intra.bw_bytes_per_s / 1e9, intra.latency_s * 1e6,
                              intra.nvls_bw_bytes_per_s > 0.0
                                  ? fmt::format("; NVLS all-reduce algbw {:.0f} GB/s + {:.0f} us (>= {} ranks)",
                                                intra.nvls_bw_bytes_per_s / 1e9, intra.nvls_latency_s * 1e6,
                                                intra.nvls_min_ranks)
                                  : std::string{},
                              tag));
  const LinkParams inter = network();
  lines.push_back(fmt::format("Network: {:.0f} GB/s x {:.2f} = {:.0f} GB/s per GPU, alpha {:.1f} us/step {}",
                              cluster_.nic_bw_bytes_per_s / 1e9, profile_.nic_efficiency,
                              inter.bw_bytes_per_s / 1e9, inter.latency_s * 1e6, tag));
  lines.push_back(fmt::format("TP collectives: ring over {} (tp={}), {}{}", tp_intra_node_ ? "NVLink" : "the network",
                              plan_.tp,
                              plan_.tp_comm_overlap
                                  ? "all-gather / reduce-scatter overlapped with their GEMM (1/tp exposed)"
                                  : "exposed on the compute stream",
                              plan_.async_tp_grad_reduce ? "; QKV / FC1 input-gradient reduction behind their wgrad GEMM"
                                                         : ""));
  if (plan_.ep > 1) { // --- mixture of experts ---
    lines.push_back(fmt::format("EP all-to-all: ep={}, {} member(s) per node: (k-1)/n of the buffer over NVLink, "
                                "(n-k)/n over the network, exposed on the compute stream; load imbalance {:.2f}",
                                plan_.ep, ep_members_per_node_, plan_.moe_imbalance));
  }
  if (plan_.cp > 1) { // --- context parallelism ---
    const char* link = cp_intra_node_ ? "NVLink" : "the network";
    switch (plan_.cp_comm_type) {
    case CpCommType::P2P:
      lines.push_back(fmt::format("CP ring attention (cp_comm_type p2p): cp={}, K/V exchange over {} per step, "
                                  "overlapped with the previous attention step (exposed: the excess)",
                                  plan_.cp, link));
      break;
    case CpCommType::AllGather:
      lines.push_back(fmt::format("CP all-gather attention (cp_comm_type allgather): cp={}, K/V all-gathered over {} "
                                  "per layer (backward: gathered again, dK/dV reduce-scattered), exposed",
                                  plan_.cp, link));
      break;
    case CpCommType::A2A:
      lines.push_back(fmt::format("CP Ulysses attention (cp_comm_type a2a): cp={}, Q/K/V and output all-to-alls over "
                                  "{} per layer (heads split over cp), exposed",
                                  plan_.cp, link));
      break;
    }
  }
  lines.push_back(fmt::format("Optimizer: Adam, {:.0f} B/param through HBM (memory bound) {}",
                              OPTIMIZER_BYTES_PER_PARAM, tag));
  for (const auto& line : profile_.assumptions) {
    lines.push_back(line);
  }
  return lines;
}

} // namespace cuboid::model
