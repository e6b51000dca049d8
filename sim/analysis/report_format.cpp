// Number formatting of the report views (report_format.hpp).
#include "sim/analysis/report_format.hpp"

#include <fmt/format.h>

#include <array>
#include <cmath>

namespace cuboid::sim::analysis::report_format {

namespace {
// Three significant digits with an SI-like suffix (k, M, B, T).
std::string scaled(double value, const char* prefix) {
  struct Unit {
    double scale;
    const char* suffix;
  };
  static constexpr std::array<Unit, 4> units = {{{1e12, "T"}, {1e9, "B"}, {1e6, "M"}, {1e3, "k"}}};
  const double magnitude = std::fabs(value);
  for (const Unit& unit : units) {
    if (magnitude >= unit.scale * 0.9995) {
      const double scaled_value = value / unit.scale;
      const int decimals = std::fabs(scaled_value) >= 99.95 ? 0 : std::fabs(scaled_value) >= 9.995 ? 1 : 2;
      return fmt::format("{}{:.{}f}{}", prefix, scaled_value, decimals, unit.suffix);
    }
  }
  return fmt::format("{}{:.0f}", prefix, value);
}
} // namespace

std::string usd(double value) { return value < 0.0 ? scaled(-value, "-$") : scaled(value, "$"); }

std::string usd_delta(double value) { return value < 0.0 ? scaled(-value, "-$") : scaled(value, "+$"); }

std::string price(double usd_per_gpu_hour) { return fmt::format("${:.2f}", usd_per_gpu_hour); }

std::string megawatt_hours(double kwh) {
  const double mwh = kwh / 1000.0;
  return fmt::format("{:.{}f}", mwh, mwh >= 99.95 ? 0 : mwh >= 9.995 ? 1 : 2);
}

int decimals_for_step(double step) {
  constexpr int MAX_DECIMALS = 6;
  int decimals = 0;
  for (double scaled_step = step; decimals < MAX_DECIMALS; scaled_step *= 10.0, ++decimals) {
    if (std::fabs(scaled_step - std::round(scaled_step)) < 1e-6 * std::max(1.0, scaled_step)) {
      break;
    }
  }
  return decimals;
}

std::string count(double value) { return scaled(value, ""); }

std::string days(double seconds) {
  const double value = seconds / SECONDS_PER_DAY;
  return value >= 99.95 ? fmt::format("{:.0f}", value) : fmt::format("{:.1f}", value);
}

std::string gigabytes(double bytes) { return fmt::format("{:.1f} GB", bytes / GB); }

std::string percent(double fraction) { return fmt::format("{:.1f}%", 100.0 * fraction); }

std::string plan_short(const model::Plan& plan) {
  std::string out = fmt::format("TP{} PP{} DP{}", plan.tp, plan.pp, plan.dp);
  if (plan.cp > 1) { // --- context parallelism ---
    out += fmt::format(" CP{}", plan.cp);
  }
  if (plan.ep > 1) { // --- mixture of experts ---
    out += fmt::format(" EP{}", plan.ep);
  }
  if (plan.vp > 1) {
    out += fmt::format(" VP{}", plan.vp);
  }
  return out + fmt::format(" mbs{}", plan.micro_batch_size);
}

std::string option_name(const ReportOption& option) { return fmt::format("{} x {}", option.num_gpus, option.gpu); }

std::string goal_text(const ReportInputs& inputs) {
  return inputs.goal == ReportGoal::Tokens ? fmt::format("{} tokens", count(inputs.tokens))
                                           : fmt::format("{:g} days", inputs.days);
}

std::string recommendation_line(const Report& report) {
  if (!report.recommended) {
    return "Recommendation: none: no option has a plan that fits in memory (see the reasons per option)";
  }
  const ReportOption& option = report.options[*report.recommended];
  const Projection& p = option.with_failures;
  if (report.inputs.goal == ReportGoal::Tokens) {
    return fmt::format("Recommendation: {}, plan {}, {} days, {} (failures included)", option_name(option),
                       plan_label(option.plan), days(p.time_s), usd(p.cost_usd));
  }
  return fmt::format("Recommendation: {}, plan {}, {} tokens in {} days, {} (failures included)", option_name(option),
                     plan_label(option.plan), count(p.tokens), days(p.time_s), usd(p.cost_usd));
}

} // namespace cuboid::sim::analysis::report_format

namespace cuboid::sim::analysis {

std::string plan_label(const model::Plan& plan) {
  std::string out = fmt::format("TP{} PP{} DP{}", plan.tp, plan.pp, plan.dp);
  if (plan.cp > 1) { // --- context parallelism ---
    out += fmt::format(" CP{}", plan.cp);
  }
  if (plan.ep > 1) { // --- mixture of experts ---
    out += fmt::format(" EP{}", plan.ep);
  }
  if (plan.vp > 1) {
    out += fmt::format(" VP{}", plan.vp);
  }
  out += fmt::format(", mbs {}, {}, recompute {}, SP {}, dist-opt {}, {}", plan.micro_batch_size,
                     model::to_string(plan.schedule), model::to_string(plan.recompute),
                     plan.sequence_parallel ? "on" : "off", plan.distributed_optimizer ? "on" : "off",
                     model::to_string(plan.precision));
  // --- ZeRO / FSDP --- (stage 1 is "dist-opt on")
  if (plan.get_zero_stage() >= 2) {
    out += fmt::format(", ZeRO-{}", plan.get_zero_stage());
  }
  return out;
}

} // namespace cuboid::sim::analysis
