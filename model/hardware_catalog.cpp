// GPU and system catalogs and cluster construction. GPU numbers are the rows of scenarios/hardware/gpus.csv
// (copied from shared/specs/gpus.csv, one source string per row); board power and node fabrics cite NVIDIA
// datasheets; link latencies are assumptions and are reported as such with every result.
#include "model/hardware_catalog.hpp"
#include "model/cpu_device.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace cuboid::model {

namespace {
constexpr double TERA = 1e12;
constexpr double GIGA = 1e9;
constexpr double GBIT = 1e9 / 8.0; // 1 Gb/s in bytes/s
// Assumed per-hop latencies (no measurement in the repository): NVLink through NVSwitch, InfiniBand NIC to NIC.
constexpr double NVLINK_LATENCY_S = 3e-6;
constexpr double NET_LATENCY_S = 5e-6;
constexpr int DGX_GPUS_PER_NODE = 8;
constexpr int NVL72_GPUS = 72;

GpuSpec gpu_row(const std::string& name, double bf16_tflops, double fp16_tflops, double fp8_tflops, double hbm_gb,
                double hbm_tb_s, double nvlink_gb_s, double power_w, const std::string& source) {
  GpuSpec gpu;
  gpu.name = name;
  gpu.bf16_flops_per_s = bf16_tflops * TERA;
  gpu.fp16_flops_per_s = fp16_tflops * TERA;
  gpu.fp8_flops_per_s = fp8_tflops * TERA;
  gpu.hbm_bytes = hbm_gb * GIGA;
  gpu.hbm_bw_bytes_per_s = hbm_tb_s * TERA;
  gpu.nvlink_bw_bytes_per_s = nvlink_gb_s * GIGA;
  gpu.power_w = power_w;
  gpu.source = source;
  return gpu;
}

std::vector<std::string> latency_assumptions() {
  return {fmt::format("nvlink latency {} us per hop (assumed)", NVLINK_LATENCY_S * 1e6),
          fmt::format("network latency {} us per hop (assumed, InfiniBand NIC to NIC)", NET_LATENCY_S * 1e6)};
}

SystemSpec dgx(const std::string& name, const std::string& gpu, double nvlink_gb_s, double nic_gbit_s,
               const std::string& source) {
  SystemSpec system;
  system.name = name;
  system.gpu = gpu;
  system.gpus_per_node = DGX_GPUS_PER_NODE;
  system.nvlink_bw_bytes_per_s = nvlink_gb_s * GIGA;
  system.nic_bw_bytes_per_s = nic_gbit_s * GBIT;
  system.nvlink_latency_s = NVLINK_LATENCY_S;
  system.net_latency_s = NET_LATENCY_S;
  system.topology = Topology::RailOptimized;
  system.source = source;
  system.assumptions = latency_assumptions();
  return system;
}

// Prefer a catalog name that extends what was typed ("h100" -> "h100-sxm") over the nearest edit distance
// ("h100" -> "h200"), which would suggest a different GPU.
std::string suggestion_for(const std::string& value, const std::vector<std::string>& candidates) {
  for (const auto& candidate : candidates) {
    if (!value.empty() && candidate.rfind(value + "-", 0) == 0) {
      return candidate;
    }
  }
  return did_you_mean(value, candidates);
}

std::string field_path(const std::string& path, const char* field) {
  return path.empty() ? std::string(field) : path + "." + field;
}
} // namespace

double GpuSpec::peak_flops_per_s(Precision precision) const {
  switch (precision) {
  case Precision::Bf16:
    return bf16_flops_per_s;
  case Precision::Fp16:
    return fp16_flops_per_s;
  case Precision::Fp8:
    if (fp8_flops_per_s <= 0.0) {
      throw InfeasibleError(fmt::format("precision fp8: {} has no FP8 tensor cores (valid: bf16, fp16)", name));
    }
    return fp8_flops_per_s;
  }
  throw InternalError(fmt::format("unhandled precision {}", static_cast<int>(precision)));
}

std::vector<GpuSpec> builtin_gpus() {
  // Columns as gpus.csv: dense BF16, FP16, FP8 TFLOP/s; HBM GB; HBM TB/s; NVLink GB/s per direction; then board power.
  constexpr const char* A100_POWER = "; board power 400 W: NVIDIA A100 datasheet (SXM max TDP 400 W)";
  return {
      gpu_row("a100-40gb", 312, 312, 0, 40, 1.555, 300, 400,
              std::string("NVIDIA A100 datasheet nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (A100 40GB SXM: "
                          "BF16/FP16 Tensor 312 dense; 40GB HBM2 1555 GB/s; NVLink 600 GB/s bidirectional)") +
                  A100_POWER),
      gpu_row("a100-80gb", 312, 312, 0, 80, 2.039, 300, 400,
              std::string("NVIDIA A100 datasheet nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (BF16/FP16 "
                          "Tensor 312 dense / 624 sparse; 80GB HBM2e 2039 GB/s; NVLink 600 GB/s bidirectional) as "
                          "tabulated at https://glennklockwood.com/garden/processors/A100; cross-check "
                          "github.com/cli99/llm-analysis llm_analysis/gpu_configs/a100-sxm-80gb.json and "
                          "github.com/calculon-ai/calculon systems/a100_80g.json; no FP8 on Ampere") +
                  A100_POWER),
      gpu_row("h100-sxm", 989, 989, 1979, 80, 3.35, 450, 700,
              "NVIDIA H100 SXM datasheet (BF16/FP16 Tensor 1979 and FP8 3958 TFLOPS quoted with sparsity; "
              "'Specifications 1/2 lower without sparsity'; 80GB HBM3 3350 GB/s; NVLink 900 GB/s bidirectional; max "
              "TDP up to 700 W) as reproduced at https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html; dense "
              "989.4/1978.9 at https://glennklockwood.com/garden/processors/h100"),
      gpu_row("h200", 989, 989, 1979, 141, 4.8, 450, 700,
              "Same GH100 compute as H100 SXM (FP8 3958 / BF16 1979 TFLOPS with sparsity; 141GB HBM3e 4.8 TB/s; "
              "NVLink 900 GB/s bidirectional = 450 GB/s per direction): https://aiwiki.ai/wiki/nvidia_h200 and "
              "https://glennklockwood.com/garden/processors/h100 (H200 section); board power 700 W: NVIDIA H200 SXM "
              "datasheet (max TDP up to 700 W)"),
      gpu_row("b200", 2250, 2250, 4500, 180, 7.7, 900, 1000,
              "NVIDIA HGX B200 per-GPU spec at 1000 W (FP16/BF16 Tensor 4.5 PFLOPS and FP8 9 PFLOPS quoted with "
              "sparsity; 180GB HBM3E 7.7 TB/s; 5th-gen NVLink 1.8 TB/s bidirectional) from the nvidia.com HGX spec "
              "table as reproduced at https://zdszero.github.io/Computer/Artificial_Intelligence/Hardware.html; dense "
              "BF16 2250 / FP8 4500 at https://glennklockwood.com/garden/processors/B200 (HGX variant at 1000 W)"),
      gpu_row("gb200", 2500, 2500, 5000, 186, 8.0, 900, 1200,
              "B200 inside GB200 NVL72, configurable to 1200 W (FP16/BF16 Tensor 5 PFLOPS and FP8 10 PFLOPS quoted "
              "with sparsity; 186GB HBM3E 8 TB/s; NVLink 1.8 TB/s bidirectional) from the nvidia.com GB200 NVL72 "
              "spec table as reproduced at https://zdszero.github.io/Computer/Artificial_Intelligence/Hardware.html; "
              "dense 2500/5000 at https://glennklockwood.com/garden/processors/B200"),
  };
}

std::vector<std::string> builtin_gpu_names() {
  std::vector<std::string> names;
  for (const auto& gpu : builtin_gpus()) {
    names.push_back(gpu.name);
  }
  return names;
}

GpuSpec find_gpu(const std::string& name, const std::string& where) {
  for (auto& gpu : builtin_gpus()) {
    if (gpu.name == name) {
      return gpu;
    }
  }
  throw InputError(input_message(where, "gpu", fmt::format("unknown GPU '{}'{}", name, catalog_name_hint(name, builtin_gpu_names()))));
}

std::vector<SystemSpec> builtin_systems() {
  constexpr const char* SUPERPOD = "; rail-optimized fat tree: NVIDIA DGX SuperPOD reference architecture";
  std::vector<SystemSpec> systems = {
      dgx("dgx-a100", "a100-80gb", 300, 200,
          std::string("NVIDIA DGX A100 datasheet: 8x A100 80GB, 3rd-gen NVLink/NVSwitch 600 GB/s bidirectional per GPU "
                      "(300 GB/s per direction), 8x single-port ConnectX-6 HDR 200 Gb/s InfiniBand for compute (25 "
                      "GB/s per GPU per direction); same node in Narayanan et al. SC21 sec. 5") +
              SUPERPOD),
      dgx("dgx-a100-40gb", "a100-40gb", 300, 200,
          std::string("NVIDIA DGX A100 320GB datasheet: 8x A100 40GB, NVLink/NVSwitch 600 GB/s bidirectional per GPU, "
                      "8x ConnectX-6 HDR 200 Gb/s InfiniBand (25 GB/s per GPU per direction)") +
              SUPERPOD),
      dgx("dgx-h100", "h100-sxm", 450, 400,
          std::string("NVIDIA DGX H100 datasheet: 8x H100 SXM5, 4th-gen NVLink 900 GB/s bidirectional per GPU (450 "
                      "GB/s per direction), 8x single-port ConnectX-7 NDR 400 Gb/s InfiniBand (50 GB/s per GPU per "
                      "direction)") +
              SUPERPOD),
      dgx("dgx-h200", "h200", 450, 400,
          std::string("NVIDIA DGX H200 datasheet: 8x H200, NVLink 900 GB/s bidirectional per GPU, 8x ConnectX-7 400 "
                      "Gb/s InfiniBand (same fabric as DGX H100)") +
              SUPERPOD),
      dgx("dgx-b200", "b200", 900, 400,
          std::string("NVIDIA DGX B200 datasheet: 8x B200, 5th-gen NVLink 1.8 TB/s bidirectional per GPU (900 GB/s "
                      "per direction), 8x single-port ConnectX-7 VPI up to 400 Gb/s InfiniBand") +
              SUPERPOD),
  };
  SystemSpec nvl72 = dgx("gb200-nvl72", "gb200", 900, 400,
                         "NVIDIA GB200 NVL72 spec: 72 GPUs in one NVLink domain, 130 TB/s aggregate = 1.8 TB/s "
                         "bidirectional per GPU (900 GB/s per direction); a 'node' here is the NVLink domain");
  nvl72.gpus_per_node = NVL72_GPUS;
  nvl72.assumptions.emplace_back("one 400 Gb/s ConnectX-7 NIC per GPU between NVL72 racks (assumed, as DGX B200)");
  systems.push_back(nvl72);
  return systems;
}

std::vector<std::string> builtin_system_names() {
  std::vector<std::string> names;
  for (const auto& system : builtin_systems()) {
    names.push_back(system.name);
  }
  return names;
}

SystemSpec find_system(const std::string& name, const std::string& where) {
  for (auto& system : builtin_systems()) {
    if (system.name == name) {
      return system;
    }
  }
  throw InputError(
      input_message(where, "system", fmt::format("unknown system '{}'{}", name, catalog_name_hint(name, builtin_system_names()))));
}

std::string default_system_for_gpu(const std::string& gpu_name) {
  for (const auto& system : builtin_systems()) {
    if (system.gpu == gpu_name) {
      return system.name; // the first system per GPU is its DGX (the catalog lists one system per GPU)
    }
  }
  throw InputError(input_message("command line", "gpu",
                                 fmt::format("unknown GPU '{}'{}", gpu_name, catalog_name_hint(gpu_name, builtin_gpu_names()))));
}

ClusterSpec make_cluster(const std::string& system_or_gpu, int num_gpus, int gpus_per_node, const std::string& where) {
  return make_cluster(system_or_gpu, num_gpus, gpus_per_node, where, "");
}

ClusterSpec make_cluster(const std::string& system_or_gpu, int num_gpus, int gpus_per_node, const std::string& where,
                         const std::string& path) {
  if (system_or_gpu == CPU_DEVICE_NAME) {
    // The CPU backend on this machine (cpu_device.hpp): one node of num_gpus ranks; predicts `cuboid run --backend
    // cpu` together with a profile from `cuboid calibrate --backend cpu`.
    if (num_gpus <= 0) {
      throw InputError(input_message(where, field_path(path, "num_gpus"),
                                     fmt::format("{} is not valid (expected a positive integer)", num_gpus)));
    }
    return cpu_cluster(num_gpus);
  }
  const std::vector<std::string> systems = builtin_system_names();
  const std::vector<std::string> gpus = builtin_gpu_names();
  std::string system_name = system_or_gpu;
  if (std::find(systems.begin(), systems.end(), system_or_gpu) == systems.end()) {
    if (std::find(gpus.begin(), gpus.end(), system_or_gpu) == gpus.end()) {
      std::vector<std::string> names = gpus;
      names.insert(names.end(), systems.begin(), systems.end());
      throw InputError(input_message(where, field_path(path, "gpu"),
                                     fmt::format("unknown GPU or system '{}'{}", system_or_gpu,
                                                 catalog_name_hint(system_or_gpu, names))));
    }
    system_name = default_system_for_gpu(system_or_gpu);
  }
  const SystemSpec system = find_system(system_name, where);
  if (num_gpus <= 0) {
    throw InputError(input_message(where, field_path(path, "num_gpus"),
                                   fmt::format("{} is not valid (expected a positive integer)", num_gpus)));
  }
  if (num_gpus > MAX_NUM_GPUS) {
    throw InputError(input_message(where, field_path(path, "num_gpus"),
                                   fmt::format("{} is too large (at most {} GPUs: cuboid's bound on the simulated "
                                               "cluster, see MAX_NUM_GPUS)",
                                               num_gpus, MAX_NUM_GPUS)));
  }
  if (gpus_per_node < 0) {
    throw InputError(input_message(where, field_path(path, "gpus_per_node"),
                                   fmt::format("{} is not valid (expected a positive integer; 0 = the system's {})",
                                               gpus_per_node, system.gpus_per_node)));
  }
  ClusterSpec cluster;
  cluster.name = system.name;
  cluster.gpu = find_gpu(system.gpu, where);
  cluster.num_gpus = num_gpus;
  cluster.gpus_per_node = gpus_per_node == 0 ? system.gpus_per_node : gpus_per_node;
  if (num_gpus > cluster.gpus_per_node && num_gpus % cluster.gpus_per_node != 0) {
    throw InputError(input_message(where, field_path(path, "num_gpus"),
                                   fmt::format("{} is not a multiple of gpus_per_node = {} (use at most one node or "
                                               "whole nodes)",
                                               num_gpus, cluster.gpus_per_node)));
  }
  cluster.nvlink_bw_bytes_per_s = system.nvlink_bw_bytes_per_s;
  cluster.nvlink_latency_s = system.nvlink_latency_s;
  cluster.nic_bw_bytes_per_s = system.nic_bw_bytes_per_s;
  cluster.net_latency_s = system.net_latency_s;
  cluster.topology = system.topology;
  cluster.source = system.source;
  cluster.assumptions = system.assumptions;
  if (cluster.gpus_per_node != system.gpus_per_node) {
    cluster.assumptions.push_back(fmt::format("{} GPUs per node instead of {}'s {} (override from {})",
                                              cluster.gpus_per_node, system.name, system.gpus_per_node, where));
  }
  return cluster;
}

std::string catalog_name_hint(const std::string& value, const std::vector<std::string>& candidates) {
  const std::string suggestion = suggestion_for(value, candidates);
  return fmt::format(" (valid: {}{})", fmt::join(candidates, ", "),
                     suggestion.empty() ? std::string{} : fmt::format("; did you mean '{}'?", suggestion));
}

std::string to_string(Topology topology) {
  return topology == Topology::FatTree ? "fat-tree" : "rail-optimized";
}

} // namespace cuboid::model
