// CostProfile: the efficiencies and link parameters that turn FLOPs and bytes into seconds.
// Shipped defaults live in scenarios/profiles/<gpu>.yaml (every number with its source); `cuboid calibrate`
// writes measured ones in the same format. Nothing here is fitted per validation row.
#pragma once

#include <string>
#include <vector>

namespace cuboid::model {

/// One measured GEMM point: efficiency = achieved / dense peak for C(M,N) = A(M,K) B(K,N).
struct GemmPoint {
  double m = 0.0;
  double n = 0.0;
  double k = 0.0;
  double efficiency = 0.0;
};

struct CostProfile {
  std::string name;              // e.g. "a100-80gb-default"
  std::string source;            // what the numbers come from (measurement, paper, datasheet)
  std::string gpu;               // GPU catalog name it applies to
  double gemm_max_efficiency = 0.8;     // achievable fraction of dense peak for large GEMMs
  double gemm_half_efficiency_flops = 1e9; // GEMM size (FLOPs) at which efficiency falls to half of max
  double attention_efficiency = 0.5;    // fused attention, fraction of dense peak
  double hbm_efficiency = 0.8;          // achievable fraction of HBM bandwidth for memory-bound kernels
  double launch_overhead_s = 4e-6;      // per kernel
  double nvlink_efficiency = 0.8;       // achievable bus bandwidth / wire bandwidth inside a node
  double nic_efficiency = 0.8;          // achievable bus bandwidth / wire bandwidth between nodes
  double nvlink_latency_s = 5e-6;       // per collective step (alpha)
  double net_latency_s = 10e-6;         // per collective step (alpha)
  double dp_overlap_efficiency = 1.0;   // fraction of the DP reduction that can hide behind backward compute
  std::vector<GemmPoint> gemm_table;    // measured points; when non-empty they override the analytic curve
  std::vector<std::string> assumptions; // free text printed with results
};

/// Shipped default profile for a GPU catalog name (throws InputError naming the GPU if none).
CostProfile default_profile(const std::string& gpu_name);
/// Reads a profile YAML file; throws InputError with file, key and value on bad input.
CostProfile load_profile(const std::string& path);
/// Writes a profile YAML file atomically (temporary file + rename).
void save_profile(const CostProfile& profile, const std::string& path);

} // namespace cuboid::model
