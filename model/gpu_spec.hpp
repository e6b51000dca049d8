// GpuSpec and ClusterSpec: the hardware a plan runs on. Numbers come from spec sheets (scenarios/hardware/gpus.csv,
// copied from shared/specs with sources); guessed numbers (latencies) are flagged as assumptions.
#pragma once

#include <string>
#include <vector>

namespace cuboid::model {

enum class Precision { Bf16, Fp16, Fp8 };

struct GpuSpec {
  std::string name;                    // "a100-80gb", "h100-sxm", ...
  double bf16_flops_per_s = 0.0;       // dense peak
  double fp16_flops_per_s = 0.0;       // dense peak
  double fp8_flops_per_s = 0.0;        // dense peak; 0 when the GPU has no FP8 tensor cores
  double hbm_bytes = 0.0;              // vendor number converted to bytes (80 GB -> 80e9)
  double hbm_bw_bytes_per_s = 0.0;
  double nvlink_bw_bytes_per_s = 0.0;  // per GPU, one direction
  double power_w = 0.0;                // board power (TDP), for energy estimates
  std::string source;

  /// Dense peak for the given precision; throws InfeasibleError if the GPU lacks it (FP8 on A100).
  [[nodiscard]] double peak_flops_per_s(Precision precision) const;
};

enum class Topology { FatTree, RailOptimized };

/// A homogeneous cluster: num_gpus GPUs in nodes of gpus_per_node, NVLink/NVSwitch inside a node,
/// one NIC per GPU into the network between nodes.
struct ClusterSpec {
  std::string name;                      // system name, e.g. "dgx-a100"
  GpuSpec gpu;
  int num_gpus = 0;
  int gpus_per_node = 0;
  double nvlink_bw_bytes_per_s = 0.0;    // per GPU per direction inside a node
  double nvlink_latency_s = 0.0;         // per hop (assumption unless measured)
  double nic_bw_bytes_per_s = 0.0;       // per GPU per direction between nodes
  double net_latency_s = 0.0;            // per hop (assumption unless measured)
  Topology topology = Topology::FatTree;
  std::string source;
  std::vector<std::string> assumptions;  // guessed numbers, printed with every result

  [[nodiscard]] int num_nodes() const { return (num_gpus + gpus_per_node - 1) / gpus_per_node; }
  [[nodiscard]] int node_of(int rank) const { return rank / gpus_per_node; }
};

} // namespace cuboid::model
