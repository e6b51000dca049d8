// Built-in GPU and system (DGX node + network) catalogs, cluster construction, and the cluster section of scenario
// files with its unit strings ("300 GB/s", "5 us"). GPU rows are copies of scenarios/hardware/gpus.csv with sources;
// latencies are assumptions and say so in ClusterSpec::assumptions.
#pragma once

#include "model/gpu_spec.hpp"

#include <string>
#include <vector>

namespace YAML {
class Node;
} // namespace YAML

namespace cuboid::model {

/// A node type: GPUs per node, NVLink inside, one NIC per GPU into the network.
struct SystemSpec {
  std::string name;                    // "dgx-a100"
  std::string gpu;                     // GPU catalog name, "a100-80gb"
  int gpus_per_node = 0;
  double nvlink_bw_bytes_per_s = 0.0;  // per GPU per direction
  double nic_bw_bytes_per_s = 0.0;     // per GPU per direction
  double nvlink_latency_s = 0.0;       // per hop (assumption)
  double net_latency_s = 0.0;          // per hop (assumption)
  Topology topology = Topology::RailOptimized;
  std::string source;
  std::vector<std::string> assumptions;
};

std::vector<GpuSpec> builtin_gpus();
std::vector<std::string> builtin_gpu_names();
/// Exact catalog name only (no aliases); InputError "<where>: gpu: unknown GPU 'h100' (valid: ...; did you mean
/// 'h100-sxm'?)".
GpuSpec find_gpu(const std::string& name, const std::string& where);

std::vector<SystemSpec> builtin_systems();
std::vector<std::string> builtin_system_names();
SystemSpec find_system(const std::string& name, const std::string& where);
/// The DGX system built around a GPU: a100-80gb -> dgx-a100, a100-40gb -> dgx-a100-40gb, h100-sxm -> dgx-h100,
/// h200 -> dgx-h200, b200 -> dgx-b200, gb200 -> gb200-nvl72. InputError for an unknown GPU.
std::string default_system_for_gpu(const std::string& gpu_name);

/// Bounded resources: the largest cluster cuboid accepts, 2^22 = 4,194,304 GPUs (about 20x the largest clusters
/// announced by 2025). Per-rank tables (DP/TP groups, per-rank memory, the --all-ranks graph) stay a few hundred MB
/// at this size, and every rank product fits an int.
constexpr int MAX_NUM_GPUS = 1 << 22;

/// A cluster of num_gpus GPUs of a system (by system name, or by GPU name via default_system_for_gpu).
/// gpus_per_node = 0 takes the system's. InputError when num_gpus <= 0 or > MAX_NUM_GPUS, gpus_per_node < 0, or
/// num_gpus is larger than a node but not a whole number of nodes. ClusterSpec::name is the system name.
ClusterSpec make_cluster(const std::string& system_or_gpu, int num_gpus, int gpus_per_node, const std::string& where);
/// Same, with `path` as the key path prefix of the fields in messages ("cluster" -> "cluster.num_gpus").
ClusterSpec make_cluster(const std::string& system_or_gpu, int num_gpus, int gpus_per_node, const std::string& where,
                         const std::string& path);

/// "300 GB/s", "200 Gb/s", "1.5TB/s" -> bytes/s. Units: B/s, KB/s, MB/s, GB/s, Gb/s, TB/s (decimal; Gb is bits).
/// InputError naming where, field and the text for a bad number, a non-positive value or an unknown unit.
double parse_bandwidth(const std::string& text, const std::string& where, const std::string& field);
/// "5 us", "3us", "0.5 ms" -> seconds (>= 0). Units: s, ms, us, ns.
double parse_duration(const std::string& text, const std::string& where, const std::string& field);

/// The `cluster:` mapping of a scenario file: system and/or gpu, num_gpus, optional gpus_per_node,
/// nvlink_bandwidth, nic_bandwidth, nvlink_latency, net_latency (unit strings), topology (fat-tree|rail-optimized).
/// `path` is the key path used in messages ("cluster"). Overrides are listed in the result's assumptions.
ClusterSpec load_cluster_yaml(const YAML::Node& node, const std::string& where, const std::string& path);

std::string to_string(Topology topology);

/// valid_values_hint (errors.hpp) that prefers a catalog name extending the typed one ("h100" -> "h100-sxm") over
/// the nearest by edit distance ("h200"), which would be a different GPU.
std::string catalog_name_hint(const std::string& value, const std::vector<std::string>& candidates);

} // namespace cuboid::model
