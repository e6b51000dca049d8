// `cuboid validate`: predicts every published training run of a CSV (published_runs.csv format) with the rank-class
// simulation and compares with the measured step time (and peak memory where given). Reports per-row error, the
// dominant cost, MAPE overall and per source. Rows are mapped and converted by published_runs.hpp.
#pragma once

#include "model/gpu_spec.hpp"
#include "sim/analysis/published_runs.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cuboid::sim::analysis {

struct ValidateOptions {
  std::optional<std::string> profile_path; // one profile for every row (else the shipped default per GPU)
  std::string source_filter;               // keep rows whose source kind or id contains this ("" = all)
  bool include_fp8 = true;                 // false: FP8 rows are skipped
  /// Non-empty: write a Chrome/Perfetto trace of every scored row's predicted step to DIR/<id>.json.
  std::string trace_dir;
  /// Cluster for a GPU catalog name and GPU count; empty = model::make_cluster (the DGX system of that GPU).
  std::function<model::ClusterSpec(const std::string& gpu, int num_gpus)> make_cluster;
};

/// Time split of the predicted step on the bottleneck rank (fractions of the predicted step, sum to 1).
struct CostShares {
  double compute = 0.0;       // compute + recompute + optimizer
  double exposed_comm = 0.0;  // TP + PP + DP communication not hidden behind compute
  double bubble = 0.0;        // pipeline idle time
  // The parts (sim::Breakdown / step time): compute = forward/backward + recompute + optimizer, exposed_comm = tp+pp+dp.
  double recompute = 0.0;
  double optimizer = 0.0;
  double tp_comm = 0.0;
  double pp_comm = 0.0;
  double dp_comm = 0.0;
};

struct ValidationRow {
  std::string id;
  std::string source;        // source kind ("sc21", "dgxc", ...)
  RunStatus status = RunStatus::Ok;
  std::string reason;        // why not Ok
  std::string basis;         // how the measured step time was obtained
  double measured_step_s = 0.0;
  double predicted_step_s = 0.0;
  double error_pct = 0.0;    // 100 * (predicted - measured) / measured
  std::string dominant;      // "compute", "exposed comm" or "bubble"
  CostShares shares;
  std::string layout;        // "tp8 pp8 dp4 vp12 mbs1 gbs256 bf16 full-recompute sp"
  std::optional<double> measured_mem_gib;
  std::optional<double> predicted_mem_gib;
  std::vector<std::string> assumptions;
};

struct SourceSummary {
  int rows = 0;              // Ok rows
  double mape_pct = 0.0;     // mean |error|
  double bias_pct = 0.0;     // mean signed error
};

struct ValidationReport {
  std::string csv_path;
  std::vector<ValidationRow> rows;
  int ok = 0;
  int skipped = 0;
  int unsupported = 0;
  int infeasible = 0;
  SourceSummary overall;
  std::map<std::string, SourceSummary> per_source;
  std::optional<double> memory_mape_pct;               // over rows with measured peak memory
  std::map<std::string, std::vector<std::string>> profile_assumptions; // GPU -> CostModel::assumptions()
};

/// Reads, maps, simulates and compares every row. Bad CSV input throws InputError (file, line, column); a row that
/// cannot be predicted is reported with its status and reason, never thrown.
ValidationReport validate_runs(const std::string& csv_path, const ValidateOptions& options);

/// Recomputes counts, MAPE overall and per source from report.rows (validate_runs calls it).
void summarise(ValidationReport& report);

nlohmann::json to_json(const ValidationReport& report);
/// Fixed-width table with '#' header lines and a units row (STYLE.md section 9), then the summary.
std::string format_table(const ValidationReport& report);

} // namespace cuboid::sim::analysis
