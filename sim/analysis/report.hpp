// The capacity-planning report of `cuboid report`: for each (GPU type, GPU count) option, the best plan of the layout
// search (search.hpp) turned into what a manager asks: time to train, GPU-hours, dollars, energy, memory headroom,
// goodput under failures (goodput.hpp), what one straggler costs, and how sensitive the answer is to the numbers
// we are least sure of. build_report() computes; the format_* functions render the same Report as JSON (every
// number printed anywhere is in it), terminal text, Markdown and a self-contained HTML page with SVG charts.
#pragma once

#include "model/cost_profile.hpp"
#include "model/gpu_spec.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"
#include "sim/analysis/goodput.hpp"
#include "sim/analysis/report_defaults.hpp"
#include "sim/analysis/search.hpp"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cuboid::sim::analysis {

/// One GPU type to evaluate. `cluster.num_gpus` is ignored (each option re-sizes it).
struct ReportGpu {
  model::ClusterSpec cluster;
  model::CostProfile profile;
  GpuPrice price;
  GpuPower power;             // board power per GPU and its source
};

enum class ReportGoal { Tokens, Days };          // train a token budget, or train for a fixed number of days
enum class ReportObjective { Balanced, Cost, Time };

struct ReportInputs {
  model::ModelSpec model;
  std::vector<ReportGpu> gpus;
  std::vector<int> num_gpus;  // the same counts for every GPU type
  SearchSpace space;          // num_gpus is replaced by `num_gpus`; global_batch_size required
  ReportGoal goal = ReportGoal::Tokens;
  double tokens = 0.0;        // ReportGoal::Tokens
  double days = 0.0;          // ReportGoal::Days
  FailureAssumptions failures;
  double pue = DEFAULT_PUE;
  double server_overhead = DEFAULT_SERVER_OVERHEAD;
  double straggler_slowdown = 0.0;     // > 1: one GPU runs this many times slower; 0 = not reported
  double sensitivity_fraction = 0.2;   // +/- swing of the tornado inputs
  ReportObjective objective = ReportObjective::Balanced;
  double cost_tolerance = 0.1;         // Balanced: fastest option within this fraction of the cheapest per token
  int jobs = 0;                        // search threads (0 = all cores)
};

/// Tokens, time and money of one option, either on a perfect machine (`ideal`) or with failures.
struct Projection {
  double tokens = 0.0;        // tokens trained
  double time_s = 0.0;        // wall-clock time
  double gpu_hours = 0.0;     // num_gpus * time_s / 3600
  double cost_usd = 0.0;      // gpu_hours * usd_per_gpu_hour
  double energy_kwh = 0.0;    // num_gpus * power_w * server_overhead * pue * time_s / 3600 / 1000
};

struct StragglerImpact {
  double slowdown = 1.0;      // the slow GPU's compute slowdown (input)
  double step_time_s = 0.0;   // step time with the straggler
  double tokens_per_s = 0.0;
  double job_slowdown = 1.0;  // step_time_s / the healthy step time
  Projection with_failures;   // the with-failures projection at the straggler's pace
};

/// One (GPU type, GPU count) option and its best plan.
struct ReportOption {
  std::string gpu;
  int num_gpus = 0;
  bool feasible = false;
  std::string reason;              // why no plan fits, when !feasible
  std::size_t plans_in_space = 0;
  std::size_t plans_simulated = 0;
  model::Plan plan;
  SimResult result;                // compact (no timeline) result of the best plan
  double power_w_per_gpu = 0.0;
  GpuPrice price;
  Goodput goodput;
  Projection ideal;
  Projection with_failures;
  double usd_per_million_tokens = 0.0;   // with failures
  std::optional<StragglerImpact> straggler;
};

/// One tornado bar: the recommended option's with-failures time and cost with one input moved down / up.
struct SensitivityRow {
  std::string input;          // "GEMM efficiency", "NIC bandwidth efficiency", "MTBF per GPU", "GPU-hour price"
  double base_value = 0.0;
  double low_value = 0.0;
  double high_value = 0.0;
  std::string unit;           // "", "h", "USD/GPU-h"
  Projection low;
  Projection high;
  std::string note;           // e.g. "clamped to 1.0"
};

/// One block of the recommended plan's step timeline (rank classes: one row per pipeline stage).
enum class TimelineLane { Compute, Comm };
struct TimelineBlock {
  int stage = 0;
  TimelineLane lane = TimelineLane::Compute;
  std::string category;       // "forward", "backward", "optimizer", "pp-comm", "dp-comm", "tp-comm"
  double start_s = 0.0;
  double end_s = 0.0;
};

struct StageMemory {
  int stage = 0;
  double peak_bytes = 0.0;
  model::MemBytes at_peak{};  // by tag, at the moment of the stage's peak
};

struct Report {
  ReportInputs inputs;
  std::vector<ReportOption> options;    // GPU-major, counts in input order
  std::optional<std::size_t> recommended;
  std::string recommendation_rule;      // how the recommended option was chosen, in words
  std::vector<SensitivityRow> sensitivity;
  std::vector<TimelineBlock> timeline;  // coalesced blocks of one step of the recommended plan
  double timeline_step_s = 0.0;
  std::vector<StageMemory> memory;      // per pipeline stage of the recommended plan
  double hbm_bytes = 0.0;
  std::vector<std::string> assumptions; // every assumption in words (economics, failures, stragglers, cost profile)
};

/// Runs the searches and the extra simulations. Throws InputError for bad inputs (naming the flag) and when a GPU
/// has no price; options where nothing fits are reported as infeasible, not thrown.
Report build_report(const ReportInputs& inputs);

/// Plan as one short line: "TP8 PP16 DP8, mbs 1, 1f1b, recompute none, SP on, dist-opt on, bf16".
std::string plan_label(const model::Plan& plan);

nlohmann::json report_to_json(const Report& report);
std::string format_report_text(const Report& report);
std::string format_report_markdown(const Report& report);
/// One self-contained HTML page (inline CSS and SVG, no scripts, fonts or images from elsewhere).
std::string format_report_html(const Report& report);

/// Escapes &, <, >, " and ' for HTML text and attribute values.
std::string html_escape(std::string_view text);

} // namespace cuboid::sim::analysis
