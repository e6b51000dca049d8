// Collective algorithms as the simulator sees them: each turns a collective of S bytes over a group into phases,
// each a latency (alpha) term followed by `bytes_per_member` leaving every member on one fabric (NVLink or NIC).
// One file per algorithm (ring.cpp, tree.cpp, hierarchical.cpp); select.cpp picks one per call like NCCL's tuner
// (lowest predicted isolated time). S is the nccl-tests size: the all-reduce buffer, the reduce-scatter input,
// the all-gather output.
#pragma once

#include "model/cost_model.hpp"
#include "model/gpu_spec.hpp"
#include "model/task_graph.hpp"

#include <string>
#include <vector>

namespace cuboid::sim::collectives {

enum class Fabric { Nvlink, Nic };
enum class Algorithm { None, Ring, Tree, Hierarchical };

struct PhaseSpec {
  double latency_s = 0.0;         // sum of the per-step alpha terms of this phase
  double bytes_per_member = 0.0;  // bytes each member sends (and receives) on `fabric` during this phase
  Fabric fabric = Fabric::Nvlink;
};

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
/// NCCL double binary tree all-reduce (Sanders et al. 2009; NCCL 2.4 blog "Massively scale your deep learning
/// training with NCCL 2.4"): reduce up and broadcast down two complementary trees, each carrying S/2. Every rank is
/// interior in one tree and a leaf in the other, so it sends and receives 2*S in total:
///   latency 2*ceil(log2 n)*alpha, bytes 2*S. Only all-reduce has a tree; other kinds return {}.
std::vector<PhaseSpec> tree(model::CollectiveKind kind, double msg_bytes, int n, Fabric fabric,
                            const model::LinkParams& link);
/// Two-level algorithm for groups with k = members_per_node > 1 on m = num_nodes > 1 nodes:
///   all-reduce:     reduce-scatter in the node (NVLink ring, k members, S) ; all-reduce across nodes
///                   (NIC, m members, S/k, ring or tree whichever is faster) ; all-gather in the node (NVLink, S)
///   reduce-scatter: NVLink reduce-scatter of S ; NIC reduce-scatter of S/k
///   all-gather:     NIC all-gather of S/k ; NVLink all-gather of S
///   all-to-all:     NVLink (k-1)/n * S with (k-1) alphas ; NIC (n-k)/n * S with (n-k) alphas
std::vector<PhaseSpec> hierarchical(model::CollectiveKind kind, double msg_bytes, const GroupLayout& layout,
                                    const Links& links);

/// Isolated time of phases: sum of latency + bytes_per_member / bandwidth of the phase's fabric.
double isolated_time_s(const std::vector<PhaseSpec>& phases, const Links& links);

/// Picks the algorithm: one node -> ring on NVLink; several nodes with several members each -> hierarchical;
/// one member per node -> ring on the NIC. For all-reduce a flat tree on the same fabric competes and the lowest
/// isolated time wins (ties -> ring), like NCCL's tuner does for small, latency-bound messages.
CollectiveSchedule choose(model::CollectiveKind kind, double msg_bytes, const GroupLayout& layout, const Links& links);

std::string to_string(Algorithm algorithm);

} // namespace cuboid::sim::collectives
