// Command-line flags shared by simulate, search, run and report: model, cluster and plan, with Megatron-LM's long
// names as aliases. resolve_scenario() turns them (plus an optional scenario file) into a validated Scenario.
#pragma once

#include "model/scenario.hpp"

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

namespace cuboid::tools {

struct ModelFlags {
  std::string model = "gpt3-175b"; // catalog name, config.json, model YAML or scenario YAML
  std::optional<std::int64_t> num_layers;
  std::optional<std::int64_t> hidden_size;
  std::optional<std::int64_t> num_attention_heads;
  std::optional<std::int64_t> num_query_groups;
  std::optional<std::int64_t> ffn_hidden_size;
  std::optional<std::int64_t> vocab_size;
  std::optional<std::int64_t> seq_length;
  // --- mixture of experts ---
  std::optional<std::int64_t> num_experts;         // Megatron --num-experts
  std::optional<std::int64_t> top_k;               // Megatron --moe-router-topk
  std::optional<std::int64_t> moe_ffn_hidden_size; // Megatron --moe-ffn-hidden-size
};

struct ClusterFlags {
  std::optional<std::string> gpu;
  std::optional<std::string> system;
  std::optional<int> num_gpus;
  std::optional<int> gpus_per_node;
  std::optional<std::string> profile; // cost profile YAML
};

struct PlanFlags {
  std::optional<int> tp;
  std::optional<int> pp;
  std::optional<int> dp;
  std::optional<int> vp;
  std::optional<std::int64_t> micro_batch_size;
  std::optional<std::int64_t> global_batch_size;
  std::optional<std::string> schedule;
  std::optional<std::string> recompute;
  std::optional<std::string> precision;
  bool sequence_parallel = false;
  bool distributed_optimizer = false;
  bool no_overlap_grad_reduce = false;
  bool grad_reduce_in_bf16 = false;
  bool overlap_param_gather = false;
  bool tp_comm_overlap = false;
  bool async_tp_grad_reduce = false;
  std::optional<int> first_stage_layers;
  std::optional<int> last_stage_layers;
  bool account_for_embedding_in_pipeline_split = false; // Megatron-Core --account-for-embedding-in-pipeline-split
  bool account_for_loss_in_pipeline_split = false;      // Megatron-Core --account-for-loss-in-pipeline-split
  // --- mixture of experts ---
  std::optional<int> ep;                // Megatron --expert-model-parallel-size
  std::optional<double> moe_imbalance;  // busiest expert's tokens / mean tokens
  // --- context parallelism ---
  std::optional<int> cp;
  std::optional<std::string> cp_comm_type; // Megatron --cp-comm-type p2p|allgather|a2a
  // --- ZeRO / FSDP ---
  std::optional<int> zero;   // --zero 0|1|2|3
  bool fsdp = false;         // --fsdp = --zero 3
};

struct ScenarioFlags {
  std::optional<std::string> scenario; // positional scenario YAML
  ModelFlags model;
  ClusterFlags cluster;
  PlanFlags plan;
};

void add_model_flags(CLI::App& app, ModelFlags& flags);
void add_cluster_flags(CLI::App& app, ClusterFlags& flags);
/// Single-valued plan flags (simulate, run). Search registers list-valued ones itself.
void add_plan_flags(CLI::App& app, PlanFlags& flags);
void add_scenario_flags(CLI::App& app, ScenarioFlags& flags);

/// Applies model overrides (--num-layers ...) to `spec`; validates the result.
void apply_model_flags(const ModelFlags& flags, model::ModelSpec& spec);

/// Builds the scenario: scenario file (positional or --model x.yaml with plan/cluster keys) first, then flags on top.
/// Defaults when nothing is given: GPT-3 175B on 1024 A100-80GB, TP8 PP16 DP8, mbs 1, gbs 1536 (Narayanan et al.
/// SC21 section 5.1). Throws InputError / InfeasibleError with "command line" as the location.
model::Scenario resolve_scenario(const ScenarioFlags& flags);

} // namespace cuboid::tools
