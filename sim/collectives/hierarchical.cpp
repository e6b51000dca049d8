// Hierarchical (two-level) collectives, as NCCL runs them on multi-node groups with several GPUs per node:
// the intra-node part on NVLink over all S bytes, the inter-node part on the NIC over 1/k of the data, so each
// GPU's own NIC carries only its shard (one NIC per GPU, DESIGN.md cluster model).
#include "sim/collectives/collective.hpp"

namespace cuboid::sim::collectives {

std::vector<PhaseSpec> hierarchical(model::CollectiveKind kind, double msg_bytes, const GroupLayout& layout,
                                    const Links& links) {
  using model::CollectiveKind;
  const int k = layout.members_per_node;
  const int m = layout.num_nodes;
  const double shard_bytes = msg_bytes / static_cast<double>(k);
  std::vector<PhaseSpec> phases;
  auto append = [&phases](const std::vector<PhaseSpec>& more) { phases.insert(phases.end(), more.begin(), more.end()); };
  switch (kind) {
  case CollectiveKind::AllReduce: {
    append(ring(CollectiveKind::ReduceScatter, msg_bytes, k, Fabric::Nvlink, links.nvlink));
    std::vector<PhaseSpec> inter = ring(CollectiveKind::AllReduce, shard_bytes, m, Fabric::Nic, links.nic);
    std::vector<PhaseSpec> inter_tree = tree(CollectiveKind::AllReduce, shard_bytes, m, Fabric::Nic, links.nic);
    if (!inter_tree.empty() && isolated_time_s(inter_tree, links) < isolated_time_s(inter, links)) {
      inter = inter_tree;
    }
    append(inter);
    append(ring(CollectiveKind::AllGather, msg_bytes, k, Fabric::Nvlink, links.nvlink));
    break;
  }
  case CollectiveKind::ReduceScatter:
    append(ring(CollectiveKind::ReduceScatter, msg_bytes, k, Fabric::Nvlink, links.nvlink));
    append(ring(CollectiveKind::ReduceScatter, shard_bytes, m, Fabric::Nic, links.nic));
    break;
  case CollectiveKind::AllGather:
    append(ring(CollectiveKind::AllGather, shard_bytes, m, Fabric::Nic, links.nic));
    append(ring(CollectiveKind::AllGather, msg_bytes, k, Fabric::Nvlink, links.nvlink));
    break;
  case CollectiveKind::AllToAll: {
    const auto n = static_cast<double>(layout.size);
    const auto local = static_cast<double>(k);
    phases.push_back(PhaseSpec{(local - 1.0) * links.nvlink.latency_s, (local - 1.0) / n * msg_bytes, Fabric::Nvlink});
    phases.push_back(PhaseSpec{(n - local) * links.nic.latency_s, (n - local) / n * msg_bytes, Fabric::Nic});
    break;
  }
  }
  return phases;
}

} // namespace cuboid::sim::collectives
