// NVLink SHARP all-reduce (NCCL "NVLS" algorithm, NVSwitch in-network reduction on H100/H200 nodes): every rank
// pushes S into the switch and pulls the reduced S back, at the NVLS algorithm bandwidth the cost profile gives.
#include "sim/collectives/collective.hpp"

namespace cuboid::sim::collectives {

std::vector<PhaseSpec> nvls(model::CollectiveKind kind, double msg_bytes, int n, const model::LinkParams& nvlink) {
  if (kind != model::CollectiveKind::AllReduce || n <= 1 || nvlink.nvls_bw_bytes_per_s <= 0.0 ||
      n < nvlink.nvls_min_ranks || nvlink.bw_bytes_per_s <= 0.0) {
    return {};
  }
  // Bytes on the NVLink port chosen so that bytes / nvlink_bw = S / nvls_bw when the port is not shared.
  return {make_phase(nvlink.nvls_latency_s, msg_bytes * nvlink.bw_bytes_per_s / nvlink.nvls_bw_bytes_per_s,
                     Fabric::Nvlink)};
}

} // namespace cuboid::sim::collectives
