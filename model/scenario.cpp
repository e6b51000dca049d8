// Scenario files: the top-level mapping, the `model:` forms (catalog name, config path, mapping) and the `plan:`
// mapping; the `cluster:` mapping is read by cluster_config.cpp. Ends with the whole-scenario validate().
#include "model/scenario.hpp"

#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/yaml_fields.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <utility>

namespace cuboid::model {

namespace {
const std::vector<std::string> SCENARIO_KEYS = {"description", "model", "cluster", "plan"};

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void require_key(const YAML::Node& root, const char* key, const std::string& where, const char* expected) {
  if (!root[key] || root[key].IsNull()) {
    throw InputError(input_message(where, key, fmt::format("missing required key (expected {})", expected)));
  }
}

ModelSpec load_scenario_model(const YAML::Node& node, const std::string& where, const std::string& base_dir) {
  if (node.IsMap()) {
    return model_from_yaml(node, where, "model", base_dir);
  }
  const std::string text = yaml::read_string(node, where, "model");
  if (ends_with(text, ".json") || ends_with(text, ".yaml") || ends_with(text, ".yml")) {
    // Model files are found relative to the scenario file, so scenarios can be run from any directory.
    const std::filesystem::path file(text);
    const std::string resolved = file.is_absolute() || base_dir.empty() ? text : (base_dir / file).string();
    if (!std::filesystem::exists(resolved)) {
      throw InputError(input_message(where, "model", fmt::format("file '{}' not found (looked for {})", text,
                                                                 resolved)));
    }
    return load_model(resolved, where, "model");
  }
  return find_model(text, where, "model");
}
} // namespace

std::vector<std::string> plan_yaml_keys() {
  return {"tp",         "pp",          "dp",          "vp",         "micro_batch_size",      "global_batch_size",
          "ep",         "moe_imbalance", // --- mixture of experts ---
          "schedule",   "recompute",   "precision",   "sequence_parallel", "distributed_optimizer",
          "overlap_grad_reduce", "grad_reduce_in_bf16", "grad_bucket_bytes", "first_stage_layers", "last_stage_layers",
          // --- context parallelism ---
          "cp", "cp_comm_type",
          // --- ZeRO / FSDP ---
          "zero_stage",
          // Megatron-Core's embedding/loss-aware pipeline split
          "account_for_embedding_in_pipeline_split", "account_for_loss_in_pipeline_split",
          // communication overlap (Plan comments)
          "overlap_param_gather", "tp_comm_overlap", "async_tp_grad_reduce"};
}

Plan load_plan_yaml(const YAML::Node& node, const std::string& where, const std::string& path, int num_gpus) {
  yaml::check_mapping(node, where, path, plan_yaml_keys());
  const auto key = [&](const char* name) { return yaml::join_path(path, name); };
  Plan plan;
  const std::pair<const char*, int*> parallel[] = {{"tp", &plan.tp}, {"pp", &plan.pp}, {"vp", &plan.vp},
                                                   {"cp", &plan.cp}};
  for (const auto& [name, target] : parallel) {
    if (node[name]) {
      *target = yaml::read_positive_int32(node[name], where, key(name));
    }
  }
  if (node["micro_batch_size"]) {
    plan.micro_batch_size = yaml::read_positive_int(node["micro_batch_size"], where, key("micro_batch_size"));
  }
  if (!node["global_batch_size"]) {
    throw InputError(input_message(where, key("global_batch_size"),
                                   "missing required key (expected a positive integer: sequences per step)"));
  }
  plan.global_batch_size = yaml::read_positive_int(node["global_batch_size"], where, key("global_batch_size"));
  if (node["schedule"]) {
    plan.schedule = parse_schedule(yaml::read_string(node["schedule"], where, key("schedule")),
                                   fmt::format("{}: {}", where, key("schedule")));
  } else if (plan.vp > 1) {
    plan.schedule = Schedule::Interleaved; // Megatron: virtual stages imply the interleaved schedule
  }
  if (node["recompute"]) {
    plan.recompute = parse_recompute(yaml::read_string(node["recompute"], where, key("recompute")),
                                     fmt::format("{}: {}", where, key("recompute")));
  }
  if (node["cp_comm_type"]) { // --- context parallelism ---
    plan.cp_comm_type = parse_cp_comm_type(yaml::read_string(node["cp_comm_type"], where, key("cp_comm_type")),
                                           fmt::format("{}: {}", where, key("cp_comm_type")));
  }
  if (node["precision"]) {
    plan.precision = parse_precision(yaml::read_string(node["precision"], where, key("precision")),
                                     fmt::format("{}: {}", where, key("precision")));
  }
  const std::pair<const char*, bool*> flags[] = {{"sequence_parallel", &plan.sequence_parallel},
                                                 {"distributed_optimizer", &plan.distributed_optimizer},
                                                 {"overlap_grad_reduce", &plan.overlap_grad_reduce},
                                                 {"grad_reduce_in_bf16", &plan.grad_reduce_in_bf16},
                                                 {"account_for_embedding_in_pipeline_split",
                                                  &plan.account_for_embedding_in_pipeline_split},
                                                 {"account_for_loss_in_pipeline_split",
                                                  &plan.account_for_loss_in_pipeline_split},
                                                 {"overlap_param_gather", &plan.overlap_param_gather},
                                                 {"tp_comm_overlap", &plan.tp_comm_overlap},
                                                 {"async_tp_grad_reduce", &plan.async_tp_grad_reduce}};
  for (const auto& [name, target] : flags) {
    if (node[name]) {
      *target = yaml::read_bool(node[name], where, key(name));
    }
  }
  if (node["grad_bucket_bytes"]) {
    plan.grad_bucket_bytes = yaml::read_positive_double(node["grad_bucket_bytes"], where, key("grad_bucket_bytes"));
  }
  const std::pair<const char*, int*> stages[] = {{"first_stage_layers", &plan.first_stage_layers},
                                                 {"last_stage_layers", &plan.last_stage_layers}};
  for (const auto& [name, target] : stages) {
    if (node[name]) {
      *target = yaml::read_non_negative_int32(node[name], where, key(name));
    }
  }
  // --- mixture of experts --- (validate() checks them against the model)
  if (node["ep"]) {
    plan.ep = yaml::read_positive_int32(node["ep"], where, key("ep"));
  }
  if (node["moe_imbalance"]) {
    plan.moe_imbalance = yaml::read_positive_double(node["moe_imbalance"], where, key("moe_imbalance"));
  }
  // --- ZeRO / FSDP ---
  if (node["zero_stage"]) {
    const int stage = yaml::read_non_negative_int32(node["zero_stage"], where, key("zero_stage"));
    const bool stated = node["distributed_optimizer"].IsDefined();
    if (stated && plan.distributed_optimizer != (stage >= 1)) {
      throw InputError(input_message(where, key("zero_stage"),
                                     fmt::format("{} contradicts distributed_optimizer: {} (zero_stage 1 is the "
                                                 "distributed optimizer; valid: drop one of the two keys, or "
                                                 "distributed_optimizer {} with zero_stage {})",
                                                 stage, plan.distributed_optimizer ? "true" : "false",
                                                 stage >= 1 ? "true" : "false", stage)));
    }
    set_zero_stage(plan, stage, where, key("zero_stage"));
  }
  if (node["dp"]) {
    plan.dp = yaml::read_positive_int32(node["dp"], where, key("dp"));
  } else {
    const int model_parallel = plan.tp * plan.pp * plan.cp;
    if (num_gpus % model_parallel != 0) {
      throw InfeasibleError(input_message(
          where, key("dp"),
          plan.cp == 1 ? fmt::format("not given, and num_gpus = {} is not divisible by tp*pp = {}*{} = {} (give dp or "
                                     "change tp/pp)",
                                     num_gpus, plan.tp, plan.pp, model_parallel)
                       : fmt::format("not given, and num_gpus = {} is not divisible by tp*cp*pp = {}*{}*{} = {} (give "
                                     "dp or change tp/cp/pp)",
                                     num_gpus, plan.tp, plan.cp, plan.pp, model_parallel)));
    }
    plan.dp = num_gpus / model_parallel;
  }
  return plan;
}

Scenario load_scenario(const std::string& path) {
  const YAML::Node root = yaml::load_file(path);
  if (!root.IsDefined() || root.IsNull()) {
    throw InputError(input_message(path, "", "empty file (expected keys: model, cluster, plan)"));
  }
  yaml::check_mapping(root, path, "", SCENARIO_KEYS);
  require_key(root, "model", path, "a catalog name, a config.json path or a mapping of model fields");
  require_key(root, "cluster", path, "a mapping with system or gpu and num_gpus");
  require_key(root, "plan", path, "a mapping with tp, pp, dp, micro_batch_size, global_batch_size, ...");
  if (root["description"]) {
    (void)yaml::read_string(root["description"], path, "description");
  }
  const std::string base_dir = std::filesystem::path(path).parent_path().string();
  Scenario scenario;
  scenario.path = path;
  scenario.model = load_scenario_model(root["model"], path, base_dir);
  scenario.cluster = load_cluster_yaml(root["cluster"], path, "cluster");
  scenario.plan = load_plan_yaml(root["plan"], path, "plan", scenario.cluster.num_gpus);
  validate(scenario.plan, scenario.model, scenario.cluster, path);
  return scenario;
}

} // namespace cuboid::model
