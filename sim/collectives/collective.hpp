// Collective algorithms as the simulator sees them: each turns a collective of S bytes over a group into phases,
// each a latency (alpha) term followed by bytes leaving (and entering) every member on NVLink and/or the NIC; the
// two fabrics of one phase run concurrently (pipelined chunks). One file per algorithm (ring.cpp, tree.cpp,
// nvls.cpp, hierarchical.cpp); select.cpp picks one per call like NCCL's tuner (lowest predicted isolated time).
// S is the nccl-tests size: the all-reduce buffer, the reduce-scatter input, the all-gather output.
#pragma once

#include "model/cost_model.hpp"
#include "model/gpu_spec.hpp"
#include "model/task_graph.hpp"

#include <string>
#include <vector>

namespace cuboid::sim::collectives {

enum class Fabric { Nvlink, Nic };
enum class Algorithm { None, Ring, Tree, Nvls, Hierarchical };

struct PhaseSpec {
  double latency_s = 0.0;     // sum of the per-step alpha terms of this phase
  double nvlink_bytes = 0.0;  // bytes each member sends (and receives) on NVLink during this phase
  double nic_bytes = 0.0;     // bytes each member sends (and receives) on its NIC during this phase
  [[nodiscard]] double bytes(Fabric fabric) const { return fabric == Fabric::Nvlink ? nvlink_bytes : nic_bytes; }
};
/// A phase moving `bytes` per member on one fabric.
PhaseSpec make_phase(double latency_s, double bytes, Fabric fabric);

struct Links {
  model::LinkParams nvlink;
  model::LinkParams nic;
  [[nodiscard]] const model::LinkParams& of(Fabric fabric) const { return fabric == Fabric::Nvlink ? nvlink : nic; }
};

/// Where a group's members sit: `size` members on `num_nodes` nodes, at most `members_per_node` on one node.
struct GroupLayout {
  int size = 1;
  int members_per_node = 1;
  int num_nodes = 1;
};

struct CollectiveSchedule {
  Algorithm algorithm = Algorithm::None;
  std::vector<PhaseSpec> phases;
};

/// Layout of a full member list (world ranks) on `cluster` (node = rank / gpus_per_node).
GroupLayout layout_of(const std::vector<int>& members, const model::ClusterSpec& cluster);

/// Ring over n members on one fabric (NCCL ring; nccl-tests doc/PERFORMANCE.md factors):
///   all-reduce:  2(n-1) steps -> latency 2(n-1)*alpha, bytes 2(n-1)/n * S
///   reduce-scatter, all-gather, all-to-all: (n-1) steps -> latency (n-1)*alpha, bytes (n-1)/n * S
std::vector<PhaseSpec> ring(model::CollectiveKind kind, double msg_bytes, int n, Fabric fabric,
                            const model::LinkParams& link);
/// NVLink SHARP all-reduce (NCCL NVLS, H100 and later; only inside a node): the switch reduces, so each rank sends
/// and receives S once at the NVLS algorithm bandwidth: time = nvls_latency + S / nvls_bw. Modelled as a flow of
/// S * nvlink_bw / nvls_bw bytes on the NVLink ports so that it shares them with other traffic. {} when the link
/// has no NVLS, the kind is not all-reduce, or n < nvls_min_ranks (same rule as CostModel::collective_time_s).
std::vector<PhaseSpec> nvls(model::CollectiveKind kind, double msg_bytes, int n, const model::LinkParams& nvlink);
/// NCCL double binary tree all-reduce (Sanders et al. 2009; NCCL 2.4 blog "Massively scale your deep learning
/// training with NCCL 2.4"): reduce up and broadcast down two complementary trees, each carrying S/2. Every rank is
/// interior in one tree and a leaf in the other, so it sends and receives 2*S in total:
///   latency 2*ceil(log2 n)*alpha, bytes 2*S. Only all-reduce has a tree; other kinds return {}.
std::vector<PhaseSpec> tree(model::CollectiveKind kind, double msg_bytes, int n, Fabric fabric,
                            const model::LinkParams& link);
/// Two-level algorithm for groups with k = members_per_node > 1 on m = num_nodes > 1 nodes. NCCL pipelines the
/// buffer in chunks through the intra- and inter-node stages, so they form one phase whose NVLink and NIC flows run
/// concurrently: time = all alphas + max(NVLink stage, NIC stage) (as CostModel::hierarchical_allreduce_time_s).
///   all-reduce:     NVLink reduce-scatter + all-gather of S in the node: 2(k-1)/k * S, 2(k-1) alpha_nvlink;
///                   NIC all-reduce of S/k across nodes: ring 2(m-1)/m * S/k, 2(m-1) alpha_nic, or tree
///                   2 * S/k, 2 ceil(log2 m) alpha_nic, whichever is faster alone
///   reduce-scatter, all-gather: NVLink (k-1)/k * S, (k-1) alpha_nvlink ; NIC (m-1)/m * S/k, (m-1) alpha_nic
///   all-to-all:     NVLink (k-1)/n * S, (k-1) alpha_nvlink ; NIC (n-k)/n * S, (n-k) alpha_nic
std::vector<PhaseSpec> hierarchical(model::CollectiveKind kind, double msg_bytes, const GroupLayout& layout,
                                    const Links& links);

/// Isolated time of phases: sum over phases of latency + max(nvlink_bytes / B_nvlink, nic_bytes / B_nic).
double isolated_time_s(const std::vector<PhaseSpec>& phases, const Links& links);

/// Picks the algorithm: one node -> ring on NVLink; several nodes with several members each -> hierarchical;
/// one member per node -> ring on the NIC. For all-reduce a flat tree on the same fabric (and NVLS inside a node)
/// competes and the lowest isolated time wins (ties -> ring), like NCCL's tuner for small, latency-bound messages.
CollectiveSchedule choose(model::CollectiveKind kind, double msg_bytes, const GroupLayout& layout, const Links& links);

std::string to_string(Algorithm algorithm);

} // namespace cuboid::sim::collectives
