// Ring collectives (NCCL ring algorithm). Bus-bandwidth factors from nccl-tests doc/PERFORMANCE.md:
// all-reduce moves 2(n-1)/n * S per rank in 2(n-1) steps; reduce-scatter and all-gather (n-1)/n * S in (n-1) steps.
#include "sim/collectives/collective.hpp"

namespace cuboid::sim::collectives {

std::vector<PhaseSpec> ring(model::CollectiveKind kind, double msg_bytes, int n, Fabric fabric,
                            const model::LinkParams& link) {
  if (n <= 1) {
    return {};
  }
  const auto members = static_cast<double>(n);
  const double steps = kind == model::CollectiveKind::AllReduce ? 2.0 * (members - 1.0) : members - 1.0;
  // Each step moves S/n per rank.
  return {make_phase(steps * link.latency_s, steps / members * msg_bytes, fabric)};
}

} // namespace cuboid::sim::collectives
