// The `cluster:` section of scenario files and the only place unit strings are parsed ("300 GB/s" -> 3e11
// bytes/s, "5 us" -> 5e-6 s). Everything past this file is SI doubles (STYLE.md section 3).
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/yaml_fields.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <utility>

namespace cuboid::model {

namespace {
struct Unit {
  const char* name;
  double scale; // to SI (bytes/s or seconds)
};

// Decimal prefixes as on spec sheets; "Gb/s" is gigabits (NIC line rates), "GB/s" gigabytes.
constexpr Unit BANDWIDTH_UNITS[] = {{"B/s", 1.0},        {"KB/s", 1e3},       {"MB/s", 1e6},
                                    {"GB/s", 1e9},       {"Gb/s", 1e9 / 8.0}, {"TB/s", 1e12}};
constexpr Unit DURATION_UNITS[] = {{"s", 1.0}, {"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}};
constexpr const char* BANDWIDTH_EXPECTED = "B/s, KB/s, MB/s, GB/s, Gb/s, TB/s";
constexpr const char* DURATION_EXPECTED = "s, ms, us, ns";

const std::vector<std::string> CLUSTER_KEYS = {"system",        "gpu",           "num_gpus",       "gpus_per_node",
                                               "nvlink_bandwidth", "nic_bandwidth", "nvlink_latency", "net_latency",
                                               "topology"};
const std::vector<std::string> TOPOLOGIES = {"fat-tree", "rail-optimized"};

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string::npos) {
    return {};
  }
  return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

// "<number> <unit>" with optional blanks; returns the value in SI units.
template <std::size_t N>
double parse_with_unit(const std::string& raw, const std::string& where, const std::string& field,
                       const Unit (&units)[N], const char* expected, bool allow_zero) {
  const std::string text = trim(raw);
  double value = 0.0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  const char* condition = allow_zero ? "a non-negative number" : "a positive number";
  if (error != std::errc{} || !std::isfinite(value) || value < 0.0 || (!allow_zero && value == 0.0)) {
    throw InputError(input_message(where, field,
                                   fmt::format("\"{}\" is not valid (expected {} with a unit: {})", raw, condition,
                                               expected)));
  }
  const std::string unit = trim(std::string(end, text.data() + text.size()));
  if (unit.empty()) {
    throw InputError(input_message(where, field, fmt::format("\"{}\" has no unit (expected {})", raw, expected)));
  }
  for (const Unit& candidate : units) {
    if (unit == candidate.name) {
      return value * candidate.scale;
    }
  }
  throw InputError(
      input_message(where, field, fmt::format("unknown unit \"{}\" in \"{}\" (expected {})", unit, raw, expected)));
}

std::string scalar_text(const YAML::Node& node, const std::string& where, const std::string& field) {
  return yaml::read_string(node, where, field);
}

void require_known(const std::string& name, const std::vector<std::string>& valid, const char* what,
                   const std::string& where, const std::string& field) {
  if (std::find(valid.begin(), valid.end(), name) == valid.end()) {
    throw InputError(
        input_message(where, field, fmt::format("unknown {} '{}'{}", what, name, catalog_name_hint(name, valid))));
  }
}
} // namespace

double parse_bandwidth(const std::string& text, const std::string& where, const std::string& field) {
  return parse_with_unit(text, where, field, BANDWIDTH_UNITS, BANDWIDTH_EXPECTED, false);
}

double parse_duration(const std::string& text, const std::string& where, const std::string& field) {
  return parse_with_unit(text, where, field, DURATION_UNITS, DURATION_EXPECTED, true);
}

ClusterSpec load_cluster_yaml(const YAML::Node& node, const std::string& where, const std::string& path) {
  yaml::check_mapping(node, where, path, CLUSTER_KEYS);
  const auto key = [&](const char* name) { return yaml::join_path(path, name); };
  if (!node["num_gpus"]) {
    throw InputError(input_message(where, key("num_gpus"), "missing required key (expected a positive integer)"));
  }
  const int num_gpus = yaml::read_positive_int32(node["num_gpus"], where, key("num_gpus"));
  const int gpus_per_node =
      node["gpus_per_node"] ? yaml::read_positive_int32(node["gpus_per_node"], where, key("gpus_per_node")) : 0;

  std::string system_or_gpu;
  if (node["system"]) {
    system_or_gpu = scalar_text(node["system"], where, key("system"));
    require_known(system_or_gpu, builtin_system_names(), "system", where, key("system"));
    if (node["gpu"]) {
      const std::string gpu = scalar_text(node["gpu"], where, key("gpu"));
      require_known(gpu, builtin_gpu_names(), "GPU", where, key("gpu"));
      const SystemSpec system = find_system(system_or_gpu, where);
      if (gpu != system.gpu) {
        throw InputError(input_message(where, key("gpu"),
                                       fmt::format("'{}' does not match system {} (built on {}); drop one of the two "
                                                   "or use system {}",
                                                   gpu, system.name, system.gpu, default_system_for_gpu(gpu))));
      }
    }
  } else if (node["gpu"]) {
    system_or_gpu = scalar_text(node["gpu"], where, key("gpu"));
    require_known(system_or_gpu, builtin_gpu_names(), "GPU", where, key("gpu"));
  } else {
    throw InputError(input_message(where, key("system"),
                                   "missing: give a system (dgx-a100, dgx-h100, ...) or a gpu (a100-80gb, ...)"));
  }
  ClusterSpec cluster = make_cluster(system_or_gpu, num_gpus, gpus_per_node, where, path);

  // Link overrides replace the system's numbers and are printed with every result.
  const std::pair<const char*, double*> bandwidths[] = {{"nvlink_bandwidth", &cluster.nvlink_bw_bytes_per_s},
                                                        {"nic_bandwidth", &cluster.nic_bw_bytes_per_s}};
  for (const auto& [name, target] : bandwidths) {
    if (node[name]) {
      const std::string text = scalar_text(node[name], where, key(name));
      *target = parse_bandwidth(text, where, key(name));
      cluster.assumptions.push_back(fmt::format("{} = {} (set in {})", key(name), text, where));
    }
  }
  // The catalog's "... latency ... (assumed)" line is dropped when the user gives the number.
  struct LatencyField {
    const char* name;
    double* target;
    const char* assumption_prefix;
  };
  const LatencyField latencies[] = {{"nvlink_latency", &cluster.nvlink_latency_s, "nvlink latency"},
                                    {"net_latency", &cluster.net_latency_s, "network latency"}};
  for (const auto& field : latencies) {
    if (node[field.name]) {
      const std::string text = scalar_text(node[field.name], where, key(field.name));
      *field.target = parse_duration(text, where, key(field.name));
      std::erase_if(cluster.assumptions,
                    [&](const std::string& line) { return line.rfind(field.assumption_prefix, 0) == 0; });
      cluster.assumptions.push_back(fmt::format("{} = {} (set in {})", key(field.name), text, where));
    }
  }
  if (node["topology"]) {
    const std::string topology = scalar_text(node["topology"], where, key("topology"));
    require_known(topology, TOPOLOGIES, "topology", where, key("topology"));
    cluster.topology = topology == "fat-tree" ? Topology::FatTree : Topology::RailOptimized;
  }
  return cluster;
}

} // namespace cuboid::model
