// JSON and table views of a simulation result: the keys of `cuboid simulate --json`, shared by `search` (CSV and
// JSON rows use the same keys) and `report`. Key names are part of the interface: add, never rename.
#pragma once

#include "model/cost_model.hpp"
#include "model/task_graph.hpp"
#include "sim/simulator.hpp"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace cuboid::sim::analysis {

/// {"tp","pp","dp","vp","micro_batch_size","global_batch_size","schedule","recompute","sequence_parallel",
///  "distributed_optimizer","precision", ...}
nlohmann::json plan_to_json(const model::Plan& plan);
/// The model and cluster actually simulated (name, shapes, GPU, bandwidths), for reproducibility.
nlohmann::json model_to_json(const model::ModelSpec& model);
nlohmann::json cluster_to_json(const model::ClusterSpec& cluster);

/// The result keys of `simulate --json`: step_time_s, tokens_per_s, tokens_per_s_per_gpu, tflops_per_gpu, mfu,
/// hw_tflops_per_gpu, bubble_fraction, peak_memory_bytes, hbm_bytes, fits, oom_reason, breakdown{}, memory{}.
nlohmann::json result_to_json(const SimResult& result);

/// The whole `simulate --json` object: plan, model, cluster, result keys, assumptions.
nlohmann::json simulation_to_json(const model::TaskGraph& graph, const model::CostModel& cost, const SimResult& result);

/// Flat ordered (key, value) pairs of plan keys then result keys, for CSV rows (nested keys joined with '.').
std::vector<std::string> csv_header();
std::vector<std::string> csv_row(const model::Plan& plan, const SimResult& result);

/// Human-readable summary table (nccl-tests style: '#' header lines, a units row).
std::string format_summary(const model::TaskGraph& graph, const model::CostModel& cost, const SimResult& result);

} // namespace cuboid::sim::analysis
