// Scenario: one model + cluster + plan read from a YAML file (scenarios/examples/*.yaml), fully validated before
// anything is built or simulated. Format (unknown or duplicate keys, wrong types, bad values -> InputError):
//   model: gpt-tiny | path/to/config.json (relative to the file) | {base: llama-3.1-8b, seq_length: 4096, ...}
//   cluster: {system: dgx-a100, num_gpus: 8}   # or gpu: h100-sxm; gpus_per_node, link overrides with units
//   plan: {tp: 2, pp: 2, dp: 2, micro_batch_size: 1, global_batch_size: 16, schedule: 1f1b, ...}
#pragma once

#include "model/gpu_spec.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

#include <string>
#include <vector>

namespace YAML {
class Node;
} // namespace YAML

namespace cuboid::model {

struct Scenario {
  std::string path;  // the file as given (error messages and reports name it)
  ModelSpec model;
  ClusterSpec cluster;
  Plan plan;
};

/// Reads, checks and validates a scenario file. InputError for malformed input (naming the file and the key path,
/// e.g. "plan.tp"), InfeasibleError for a well-formed plan that cannot run on this model and cluster.
Scenario load_scenario(const std::string& path);

/// The keys a `plan:` mapping accepts (the Plan field names).
std::vector<std::string> plan_yaml_keys();

/// Reads a `plan:` mapping (not validated against model and cluster). dp may be omitted: it is then
/// num_gpus / (tp*pp) (InfeasibleError when that does not divide). vp > 1 without a schedule implies interleaved.
Plan load_plan_yaml(const YAML::Node& node, const std::string& where, const std::string& path, int num_gpus);

} // namespace cuboid::model
