// Hierarchical (two-level) collectives, as NCCL runs them on multi-node groups with several GPUs per node:
// the intra-node part on NVLink over all S bytes, the inter-node part on the NIC over 1/k of the data, so each
// GPU's own NIC carries only its shard (one NIC per GPU, DESIGN.md cluster model). Chunks are pipelined through
// both levels, hence a single phase whose NVLink and NIC flows overlap.
#include "sim/collectives/collective.hpp"

namespace cuboid::sim::collectives {

std::vector<PhaseSpec> hierarchical(model::CollectiveKind kind, double msg_bytes, const GroupLayout& layout,
                                    const Links& links) {
  using model::CollectiveKind;
  const int k = layout.members_per_node;
  const int m = layout.num_nodes;
  const double shard_bytes = msg_bytes / static_cast<double>(k);
  // Sums two single-fabric phase lists into one pipelined phase.
  auto combine = [](const std::vector<PhaseSpec>& intra, const std::vector<PhaseSpec>& inter) {
    PhaseSpec phase;
    for (const auto* list : {&intra, &inter}) {
      for (const PhaseSpec& part : *list) {
        phase.latency_s += part.latency_s;
        phase.nvlink_bytes += part.nvlink_bytes;
        phase.nic_bytes += part.nic_bytes;
      }
    }
    return std::vector<PhaseSpec>{phase};
  };
  switch (kind) {
  case CollectiveKind::AllReduce: {
    std::vector<PhaseSpec> inter = ring(CollectiveKind::AllReduce, shard_bytes, m, Fabric::Nic, links.nic);
    std::vector<PhaseSpec> inter_tree = tree(CollectiveKind::AllReduce, shard_bytes, m, Fabric::Nic, links.nic);
    if (!inter_tree.empty() && isolated_time_s(inter_tree, links) < isolated_time_s(inter, links)) {
      inter = inter_tree;
    }
    // Reduce-scatter then all-gather inside the node: together the traffic and steps of a ring all-reduce.
    return combine(ring(CollectiveKind::AllReduce, msg_bytes, k, Fabric::Nvlink, links.nvlink), inter);
  }
  case CollectiveKind::ReduceScatter:
  case CollectiveKind::AllGather:
    return combine(ring(kind, msg_bytes, k, Fabric::Nvlink, links.nvlink),
                   ring(kind, shard_bytes, m, Fabric::Nic, links.nic));
  case CollectiveKind::AllToAll: {
    const auto n = static_cast<double>(layout.size);
    const auto local = static_cast<double>(k);
    PhaseSpec phase;
    phase.latency_s = (local - 1.0) * links.nvlink.latency_s + (n - local) * links.nic.latency_s;
    phase.nvlink_bytes = (local - 1.0) / n * msg_bytes;
    phase.nic_bytes = (n - local) / n * msg_bytes;
    return {phase};
  }
  }
  return {};
}

} // namespace cuboid::sim::collectives
