// Group layout and algorithm selection. The layout is computed from the full member list (world ranks), so a rank
// class that materialises only its representative still gets the fabric and phases of the real group.
#include "sim/collectives/collective.hpp"

#include <algorithm>
#include <utility>

namespace cuboid::sim::collectives {

GroupLayout layout_of(const std::vector<int>& members, const model::ClusterSpec& cluster) {
  GroupLayout layout;
  layout.size = std::max<int>(1, static_cast<int>(members.size()));
  if (members.empty() || cluster.gpus_per_node <= 0) {
    return layout;
  }
  std::vector<int> nodes;
  nodes.reserve(members.size());
  for (const int rank : members) {
    nodes.push_back(cluster.node_of(rank));
  }
  std::sort(nodes.begin(), nodes.end());
  layout.num_nodes = 0;
  layout.members_per_node = 0;
  for (std::size_t idx = 0; idx < nodes.size();) {
    std::size_t end = idx;
    while (end < nodes.size() && nodes[end] == nodes[idx]) {
      ++end;
    }
    ++layout.num_nodes;
    layout.members_per_node = std::max(layout.members_per_node, static_cast<int>(end - idx));
    idx = end;
  }
  return layout;
}

PhaseSpec make_phase(double latency_s, double bytes, Fabric fabric) {
  PhaseSpec phase;
  phase.latency_s = latency_s;
  (fabric == Fabric::Nvlink ? phase.nvlink_bytes : phase.nic_bytes) = bytes;
  return phase;
}

double isolated_time_s(const std::vector<PhaseSpec>& phases, const Links& links) {
  double total_s = 0.0;
  for (const PhaseSpec& phase : phases) {
    const double nvlink_s = phase.nvlink_bytes > 0.0 ? phase.nvlink_bytes / links.nvlink.bw_bytes_per_s : 0.0;
    const double nic_s = phase.nic_bytes > 0.0 ? phase.nic_bytes / links.nic.bw_bytes_per_s : 0.0;
    total_s += phase.latency_s + std::max(nvlink_s, nic_s);
  }
  return total_s;
}

CollectiveSchedule choose(model::CollectiveKind kind, double msg_bytes, const GroupLayout& layout, const Links& links) {
  CollectiveSchedule best;
  if (layout.size <= 1 || msg_bytes <= 0.0) {
    return best;
  }
  if (layout.num_nodes > 1 && layout.members_per_node > 1) {
    best.algorithm = Algorithm::Hierarchical;
    best.phases = hierarchical(kind, msg_bytes, layout, links);
    return best;
  }
  const Fabric fabric = layout.num_nodes == 1 ? Fabric::Nvlink : Fabric::Nic;
  best.algorithm = Algorithm::Ring;
  best.phases = ring(kind, msg_bytes, layout.size, fabric, links.of(fabric));
  double best_s = isolated_time_s(best.phases, links);
  auto consider = [&](Algorithm algorithm, std::vector<PhaseSpec> phases) {
    if (phases.empty()) {
      return;
    }
    const double time_s = isolated_time_s(phases, links);
    if (time_s < best_s) {
      best_s = time_s;
      best.algorithm = algorithm;
      best.phases = std::move(phases);
    }
  };
  consider(Algorithm::Tree, tree(kind, msg_bytes, layout.size, fabric, links.of(fabric)));
  if (fabric == Fabric::Nvlink) {
    consider(Algorithm::Nvls, nvls(kind, msg_bytes, layout.size, links.nvlink));
  }
  return best;
}

std::string to_string(Algorithm algorithm) {
  switch (algorithm) {
  case Algorithm::None:
    return "none";
  case Algorithm::Ring:
    return "ring";
  case Algorithm::Tree:
    return "tree";
  case Algorithm::Nvls:
    return "nvls";
  case Algorithm::Hierarchical:
    return "hierarchical";
  }
  return "unknown";
}

} // namespace cuboid::sim::collectives
