// Double binary tree all-reduce (NCCL >= 2.4). Per rank: interior in one tree (receives 2 * S/2 from its children
// and sends S/2 up, then receives S/2 and sends 2 * S/2 down), leaf in the other (S/2 up, S/2 down): 2*S each way.
// Latency: reduce up and broadcast down a tree of depth ceil(log2 n).
#include "sim/collectives/collective.hpp"

#include <cmath>

namespace cuboid::sim::collectives {

std::vector<PhaseSpec> tree(model::CollectiveKind kind, double msg_bytes, int n, Fabric fabric,
                            const model::LinkParams& link) {
  if (n <= 1 || kind != model::CollectiveKind::AllReduce) {
    return {};
  }
  const double depth = std::ceil(std::log2(static_cast<double>(n)));
  return {make_phase(2.0 * depth * link.latency_s, 2.0 * msg_bytes, fabric)};
}

} // namespace cuboid::sim::collectives
