// CostProfile: the efficiencies and link parameters that turn FLOPs and bytes into seconds.
// Shipped defaults are compiled in (cost_profile.cpp, one source of truth) and mirrored in scenarios/profiles/<gpu>.yaml
// with every number's source; `cuboid calibrate` writes measured ones in the same format. Nothing is fitted per
// validation row: one profile per GPU.
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

/// All fields are SI (seconds, FLOPs, fractions). Fractions are in (0, 1]; times and sizes are >= 0.
struct CostProfile {
  std::string name;              // e.g. "a100-80gb-default"
  std::string source;            // what the numbers come from (measurement, paper, datasheet)
  std::string gpu;               // GPU catalog name it applies to
  // ---- compute (cost_model.cpp gemm_efficiency() documents the curve)
  double gemm_max_efficiency = 0.8;        // achievable fraction of dense BF16/FP16 peak for large GEMMs
  double gemm_fp8_max_efficiency = 0.7;    // same for FP8 GEMMs (fraction of the FP8 peak)
  double gemm_half_efficiency_flops = 1e9; // GEMM size (FLOPs, at BF16) at which efficiency falls to half of max
  double num_sms = 108.0;                  // streaming multiprocessors, for GEMM wave quantisation (0 = off)
  double attention_efficiency = 0.5;       // fused attention forward, fraction of dense BF16 peak
  double attention_bwd_efficiency = 0.4;   // fused attention backward, fraction of dense BF16 peak
  double hbm_efficiency = 0.8;             // achievable fraction of HBM bandwidth for memory-bound kernels
  double launch_overhead_s = 4e-6;         // per kernel (GPU-side gap between dependent kernels)
  // ---- communication (cost_model.hpp collective_time_s documents the formulas)
  double nvlink_efficiency = 0.8;       // ring bus bandwidth / NVLink wire bandwidth inside a node
  double nic_efficiency = 0.8;          // achievable bus bandwidth / NIC wire bandwidth between nodes
  double nvlink_latency_s = 5e-6;       // per ring step (alpha) inside a node
  double net_latency_s = 10e-6;         // per ring step (alpha) between nodes
  double nvls_efficiency = 0.0;         // NVLink SHARP all-reduce: algbw / wire bw (0 = GPU has no NVLS)
  double nvls_latency_s = 0.0;          // NVLS all-reduce fixed cost per collective
  double nvls_min_ranks = 5.0;          // NCCL picks NVLS only from this group size up (H200 sweep)
  double dp_overlap_efficiency = 1.0;   // fraction of the DP reduction that can hide behind backward compute
  // ---- CPU backend kernels (CPU prediction across models, branch cpux). Seconds per element of the CPU backend's
  // own kernel (exec/cpu/norm, exec/cpu/activation, exec/cpu/rope), measured by `cuboid calibrate --backend cpu`
  // for every variant whatever model it calibrates, so that a profile of a GeLU/LayerNorm model prices
  // SwiGLU/RMSNorm/RoPE. An op tagged with a kernel (model::Op::cpu_kernel) costs elements * this + launch_overhead_s
  // instead of its bytes. 0 = not measured: priced by bytes (every GPU profile and CPU profiles written before).
  // Elements: the norm's input (tokens x hidden), the activation's output (tokens x ffn), the values RoPE rotates.
  double cpu_layernorm_fwd_s_per_element = 0.0;
  double cpu_layernorm_bwd_s_per_element = 0.0;
  double cpu_rmsnorm_fwd_s_per_element = 0.0;
  double cpu_rmsnorm_bwd_s_per_element = 0.0;
  double cpu_gelu_fwd_s_per_element = 0.0;
  double cpu_gelu_bwd_s_per_element = 0.0;
  double cpu_swiglu_fwd_s_per_element = 0.0;
  double cpu_swiglu_bwd_s_per_element = 0.0;
  double cpu_rope_s_per_element = 0.0; // forward or backward (the same rotation), added to the attention op
  std::vector<GemmPoint> gemm_table;    // measured points; when non-empty they override the analytic curve
  std::vector<std::string> assumptions; // free text printed with results
};

/// GPU names that have a shipped default profile ("a100-80gb", "a100-40gb", "h100-sxm", "h200", "b200").
std::vector<std::string> default_profile_gpus();
/// Shipped default profile for a GPU catalog name (throws InputError naming the GPU and the valid names if none).
/// Compiled in: needs no file at run time.
CostProfile default_profile(const std::string& gpu_name);
/// Reads a profile YAML file; throws InputError with file, key and value on bad input (unknown key with
/// "did you mean", NaN, negative, fraction > 1, missing file).
CostProfile load_profile(const std::string& path);
/// Writes a profile YAML file atomically (path + ".tmp", then rename). Throws InputError if it cannot write.
void save_profile(const CostProfile& profile, const std::string& path);

} // namespace cuboid::model
