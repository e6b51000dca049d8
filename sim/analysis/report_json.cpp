// JSON and terminal views of a Report (report.hpp). The JSON holds every number the other views print; key names
// are part of the interface: add, never rename.
#include "sim/analysis/report.hpp"

#include "sim/analysis/report_format.hpp"
#include "sim/analysis/result_json.hpp"

#include <fmt/format.h>

#include <array>

namespace cuboid::sim::analysis {

namespace {
namespace rf = report_format;

const std::array<std::string, model::NUM_MEM_TAGS> MEM_KEYS = {"weights",    "grads",     "optimizer",
                                                                 "activations", "workspace", "comm_buffers"};

std::string to_string(ReportObjective objective) {
  switch (objective) {
  case ReportObjective::Balanced:
    return "balanced";
  case ReportObjective::Cost:
    return "cost";
  case ReportObjective::Time:
    return "time";
  }
  return "balanced";
}

nlohmann::json projection_json(const Projection& p) {
  return nlohmann::json{{"tokens", p.tokens},       {"time_s", p.time_s},     {"days", p.time_s / rf::SECONDS_PER_DAY},
                        {"gpu_hours", p.gpu_hours}, {"cost_usd", p.cost_usd}, {"energy_kwh", p.energy_kwh}};
}

nlohmann::json price_json(const GpuPrice& price) {
  return nlohmann::json{{"gpu", price.gpu},           {"usd_per_gpu_hour", price.usd_per_gpu_hour},
                        {"provider", price.provider}, {"instance", price.instance},
                        {"region", price.region},     {"pricing", price.pricing},
                        {"as_of", price.as_of},       {"source", price.source},
                        {"user_override", price.user_override}};
}

nlohmann::json goodput_json(const Goodput& g) {
  return nlohmann::json{{"job_mtbf_s", g.job_mtbf_s},
                        {"job_mtbf_hours", g.job_mtbf_s / 3600.0},
                        {"checkpoint_interval_s", g.checkpoint_interval_s},
                        {"checkpoint_write_s", g.checkpoint_write_s},
                        {"restart_s", g.restart_s},
                        {"lost_work_per_failure_s", g.lost_work_per_failure_s},
                        {"goodput_fraction", g.goodput_fraction}};
}

nlohmann::json option_json(const ReportOption& option) {
  nlohmann::json out;
  out["gpu"] = option.gpu;
  out["num_gpus"] = option.num_gpus;
  out["feasible"] = option.feasible;
  out["plans_in_space"] = option.plans_in_space;
  out["plans_simulated"] = option.plans_simulated;
  out["price"] = price_json(option.price);
  out["power_w_per_gpu"] = option.power_w_per_gpu;
  out["goodput"] = goodput_json(option.goodput);
  if (!option.feasible) {
    out["reason"] = option.reason;
    return out;
  }
  out["plan"] = plan_to_json(option.plan);
  out["plan_label"] = plan_label(option.plan);
  out.update(result_to_json(option.result));
  out["memory_headroom_bytes"] = option.result.hbm_bytes - option.result.peak_memory_bytes;
  out["memory_headroom_fraction"] =
      option.result.hbm_bytes > 0.0 ? 1.0 - option.result.peak_memory_bytes / option.result.hbm_bytes : 0.0;
  out["ideal"] = projection_json(option.ideal);
  out["with_failures"] = projection_json(option.with_failures);
  out["expected_failures"] = option.with_failures.time_s / option.goodput.job_mtbf_s;
  out["usd_per_million_tokens"] = option.usd_per_million_tokens;
  if (option.straggler) {
    const StragglerImpact& s = *option.straggler;
    out["straggler"] = nlohmann::json{{"slowdown", s.slowdown},
                                      {"step_time_s", s.step_time_s},
                                      {"tokens_per_s", s.tokens_per_s},
                                      {"job_slowdown", s.job_slowdown},
                                      {"with_failures", projection_json(s.with_failures)},
                                      {"extra_time_s", s.with_failures.time_s - option.with_failures.time_s},
                                      {"extra_cost_usd", s.with_failures.cost_usd - option.with_failures.cost_usd},
                                      {"tokens_lost", option.with_failures.tokens - s.with_failures.tokens}};
  }
  return out;
}

std::string lane_name(TimelineLane lane) { return lane == TimelineLane::Compute ? "compute" : "comm"; }
} // namespace

nlohmann::json report_to_json(const Report& report) {
  const ReportInputs& inputs = report.inputs;
  nlohmann::json out;
  out["model"] = model_to_json(inputs.model);
  out["goal"] = inputs.goal == ReportGoal::Tokens ? nlohmann::json{{"kind", "tokens"}, {"tokens", inputs.tokens}}
                                                  : nlohmann::json{{"kind", "days"}, {"days", inputs.days}};
  nlohmann::json gpus = nlohmann::json::array();
  for (const auto& gpu : inputs.gpus) {
    gpus.push_back(nlohmann::json{{"gpu", gpu.cluster.gpu.name},
                                  {"system", gpu.cluster.name},
                                  {"gpus_per_node", gpu.cluster.gpus_per_node},
                                  {"profile", gpu.profile.name},
                                  {"price", price_json(gpu.price)},
                                  {"power_w", gpu.power.watts},
                                  {"power_source", gpu.power.source}});
  }
  out["inputs"] = nlohmann::json{{"gpus", gpus},
                                 {"num_gpus", inputs.num_gpus},
                                 {"global_batch_size", inputs.space.global_batch_size},
                                 {"pue", inputs.pue},
                                 {"server_overhead", inputs.server_overhead},
                                 {"mtbf_gpu_hours", inputs.failures.mtbf_gpu_hours},
                                 {"checkpoint_write_s", inputs.failures.checkpoint_write_s},
                                 {"restart_s", inputs.failures.restart_s},
                                 {"straggler_slowdown", inputs.straggler_slowdown},
                                 {"sensitivity_fraction", inputs.sensitivity_fraction},
                                 {"objective", to_string(inputs.objective)},
                                 {"cost_tolerance", inputs.cost_tolerance}};
  out["options"] = nlohmann::json::array();
  for (const auto& option : report.options) {
    out["options"].push_back(option_json(option));
  }
  out["recommendation_rule"] = report.recommendation_rule;
  out["recommendation"] = rf::recommendation_line(report);
  out["recommended"] = report.recommended ? nlohmann::json(*report.recommended) : nlohmann::json(nullptr);
  out["sensitivity"] = nlohmann::json::array();
  for (const auto& row : report.sensitivity) {
    out["sensitivity"].push_back(nlohmann::json{{"input", row.input},
                                                {"unit", row.unit},
                                                {"base_value", row.base_value},
                                                {"low_value", row.low_value},
                                                {"high_value", row.high_value},
                                                {"low", projection_json(row.low)},
                                                {"high", projection_json(row.high)},
                                                {"note", row.note}});
  }
  nlohmann::json blocks = nlohmann::json::array();
  for (const auto& block : report.timeline) {
    blocks.push_back(nlohmann::json{{"stage", block.stage},
                                    {"lane", lane_name(block.lane)},
                                    {"category", block.category},
                                    {"start_s", block.start_s},
                                    {"end_s", block.end_s}});
  }
  out["timeline"] = nlohmann::json{{"step_time_s", report.timeline_step_s}, {"blocks", blocks}};
  nlohmann::json stages = nlohmann::json::array();
  for (const auto& stage : report.memory) {
    nlohmann::json entry{{"stage", stage.stage}, {"peak_bytes", stage.peak_bytes}};
    for (std::size_t tag = 0; tag < MEM_KEYS.size(); ++tag) {
      entry[MEM_KEYS[tag]] = stage.at_peak[tag];
    }
    stages.push_back(entry);
  }
  out["memory"] = nlohmann::json{{"hbm_bytes", report.hbm_bytes}, {"stages", stages}};
  out["assumptions"] = report.assumptions;
  return out;
}

std::string format_report_text(const Report& report) {
  const ReportInputs& inputs = report.inputs;
  std::string out = fmt::format("# cuboid report: {} ({:.1f} B parameters), {}, global batch {}\n", inputs.model.name,
                                inputs.model.num_parameters() / 1e9, rf::goal_text(inputs),
                                inputs.space.global_batch_size);
  out += fmt::format("# {}\n", rf::recommendation_line(report));
  out += fmt::format("#   chosen as the {}\n#\n", report.recommendation_rule);
  out += fmt::format("# {:<16} {:<24} {:>8} {:>9} {:>5} {:>7} {:>7} {:>9} {:>8} {:>7} {:>9} {:>7}", "option", "plan",
                     "step", "tokens/s", "MFU", "ideal", "w/fail", "GPU-h", "cost", "energy", "peak mem", "goodput");
  const bool straggler = inputs.straggler_slowdown > 0.0;
  out += straggler ? fmt::format(" {:>9}\n", "straggler") : "\n";
  out += fmt::format("# {:<16} {:<24} {:>8} {:>9} {:>5} {:>7} {:>7} {:>9} {:>8} {:>7} {:>9} {:>7}", "", "", "(s)", "",
                     "(%)", "(days)", "(days)", "", "(USD)", "(MWh)", "(GB)", "(%)");
  out += straggler ? fmt::format(" {:>9}\n", fmt::format("(x{:g})", inputs.straggler_slowdown)) : "\n";
  for (std::size_t idx = 0; idx < report.options.size(); ++idx) {
    const ReportOption& option = report.options[idx];
    const std::string mark = report.recommended && *report.recommended == idx ? "*" : " ";
    if (!option.feasible) {
      out += fmt::format("{} {:<16} no plan fits ({})\n", mark, rf::option_name(option), option.reason);
      continue;
    }
    const SimResult& r = option.result;
    out += fmt::format("{} {:<16} {:<24} {:>8.3f} {:>9} {:>5.1f} {:>7} {:>7} {:>9} {:>8} {:>7} {:>9.1f} {:>7.1f}",
                       mark, rf::option_name(option), rf::plan_short(option.plan), r.step_time_s,
                       rf::count(r.tokens_per_s), 100.0 * r.mfu, rf::days(option.ideal.time_s),
                       rf::days(option.with_failures.time_s), rf::count(option.with_failures.gpu_hours),
                       rf::usd(option.with_failures.cost_usd), rf::megawatt_hours(option.with_failures.energy_kwh),
                       r.peak_memory_bytes / rf::GB, 100.0 * option.goodput.goodput_fraction);
    out += option.straggler ? fmt::format(" {:>8.1f}%\n", 100.0 * (option.straggler->job_slowdown - 1.0)) : "\n";
  }
  if (!report.sensitivity.empty()) {
    out += fmt::format("#\n# sensitivity of the recommended option (inputs -/+{:.0f}%)\n",
                       100.0 * inputs.sensitivity_fraction);
    const bool by_tokens = inputs.goal == ReportGoal::Tokens;
    out += fmt::format("# {:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n", "input", "low", "high",
                       by_tokens ? "days lo" : "tokens lo", by_tokens ? "days hi" : "tokens hi",
                       by_tokens ? "cost lo" : "$/Mtok lo", by_tokens ? "cost hi" : "$/Mtok hi");
    for (const auto& row : report.sensitivity) {
      const auto amount = [by_tokens](const Projection& p) {
        return by_tokens ? rf::days(p.time_s) : rf::count(p.tokens);
      };
      const auto cost = [by_tokens](const Projection& p) {
        return by_tokens ? rf::usd(p.cost_usd) : fmt::format("{:.2f}", p.cost_usd / p.tokens * 1e6);
      };
      out += fmt::format("  {:<26} {:>10.4g} {:>10.4g} {:>10} {:>10} {:>10} {:>10}\n", row.input, row.low_value,
                         row.high_value, amount(row.low), amount(row.high), cost(row.low), cost(row.high));
    }
  }
  out += "#\n# assumptions\n";
  for (const auto& line : report.assumptions) {
    out += fmt::format("#   {}\n", line);
  }
  return out;
}

} // namespace cuboid::sim::analysis
