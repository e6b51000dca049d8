// Markdown view of a Report (report.hpp): the summary, the options table, sensitivity and assumptions, for pasting
// into an issue or a design document. The charts are in the HTML view only.
#include "sim/analysis/report.hpp"

#include "sim/analysis/report_format.hpp"

#include <fmt/format.h>

namespace cuboid::sim::analysis {

namespace {
namespace rf = report_format;

// Text from input in Markdown: a '|' would split a table cell, a newline would end the table, and '<' would start
// raw HTML (which issue trackers render), so all are escaped.
std::string cell(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '|') {
      out += "\\|";
    } else if (c == '\n' || c == '\r') {
      out += ' ';
    } else if (c == '<') {
      out += "&lt;";
    } else if (c == '>') {
      out += "&gt;";
    } else {
      out += c;
    }
  }
  return out;
}
} // namespace

std::string format_report_markdown(const Report& report) {
  const ReportInputs& inputs = report.inputs;
  const bool by_tokens = inputs.goal == ReportGoal::Tokens;
  std::string out = fmt::format("# Capacity plan: {}, {}\n\n", cell(inputs.model.name), rf::goal_text(inputs));
  out += fmt::format("**{}**\n\n", cell(rf::recommendation_line(report)));
  out += fmt::format("Chosen as the {}. Model: {:.1f} B parameters, global batch {} sequences of {} tokens.\n\n",
                     cell(report.recommendation_rule), inputs.model.num_parameters() / 1e9,
                     inputs.space.global_batch_size, inputs.model.seq_length);
  out += "## Options\n\n";
  out += "| option | plan | step (s) | tokens/s | MFU | days (ideal) | days (with failures) | tokens | GPU-hours | "
         "cost | $/M tokens | energy (MWh) | peak mem / HBM | goodput |";
  const bool straggler = inputs.straggler_slowdown > 0.0;
  out += straggler ? fmt::format(" one GPU x{:g} slower |\n", inputs.straggler_slowdown) : "\n";
  out += "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|";
  out += straggler ? "--:|\n" : "\n";
  for (std::size_t idx = 0; idx < report.options.size(); ++idx) {
    const ReportOption& option = report.options[idx];
    const bool chosen = report.recommended && *report.recommended == idx;
    const std::string name = chosen ? fmt::format("**{}** (recommended)", rf::option_name(option))
                                    : rf::option_name(option);
    if (!option.feasible) {
      out += fmt::format("| {} | no plan fits ({}) |||||||||||||", cell(name), cell(option.reason));
      out += straggler ? "|\n" : "\n";
      continue;
    }
    const SimResult& r = option.result;
    const Projection& p = option.with_failures;
    out += fmt::format("| {} | {} | {:.3f} | {} | {:.1f}% | {} | {} | {} | {} | {} | {:.2f} | {} | {} / {} | {} |",
                       cell(name), cell(plan_label(option.plan)), r.step_time_s, rf::count(r.tokens_per_s),
                       100.0 * r.mfu, rf::days(option.ideal.time_s), rf::days(p.time_s), rf::count(p.tokens),
                       rf::count(p.gpu_hours), rf::usd(p.cost_usd), option.usd_per_million_tokens,
                       rf::megawatt_hours(p.energy_kwh), rf::gigabytes(r.peak_memory_bytes), rf::gigabytes(r.hbm_bytes),
                       rf::percent(option.goodput.goodput_fraction));
    if (straggler) {
      out += option.straggler
                 ? fmt::format(" +{:.1f}% time, {} |\n", 100.0 * (option.straggler->job_slowdown - 1.0),
                               rf::usd_delta(option.straggler->with_failures.cost_usd - p.cost_usd))
                 : " |\n";
    } else {
      out += "\n";
    }
  }
  out += "\n## Failures and checkpoints\n\n";
  out += "| option | job MTBF (h) | checkpoint every (min) | lost per failure (min) | expected failures | goodput |\n";
  out += "|---|--:|--:|--:|--:|--:|\n";
  for (const auto& option : report.options) {
    const Goodput& g = option.goodput;
    out += fmt::format("| {} | {:.1f} | {:.1f} | {:.1f} | {} | {} |\n", rf::option_name(option), g.job_mtbf_s / 3600.0,
                       g.checkpoint_interval_s / 60.0, g.lost_work_per_failure_s / 60.0,
                       option.feasible ? fmt::format("{:.0f}", option.with_failures.time_s / g.job_mtbf_s) : "-",
                       rf::percent(g.goodput_fraction));
  }
  if (!report.sensitivity.empty()) {
    out += fmt::format("\n## Sensitivity of the recommended option (each input -/+{:.0f}%)\n\n",
                       100.0 * inputs.sensitivity_fraction);
    out += by_tokens ? "| input | low | high | days (low) | days (high) | cost (low) | cost (high) |\n"
                     : "| input | low | high | tokens (low) | tokens (high) | $/M tokens (low) | $/M tokens (high) |\n";
    out += "|---|--:|--:|--:|--:|--:|--:|\n";
    for (const auto& row : report.sensitivity) {
      const std::string unit = row.unit.empty() ? "" : " " + row.unit;
      if (by_tokens) {
        out += fmt::format("| {} | {:.4g}{} | {:.4g}{} | {} | {} | {} | {} |\n", cell(row.input), row.low_value, unit,
                           row.high_value, unit, rf::days(row.low.time_s), rf::days(row.high.time_s),
                           rf::usd(row.low.cost_usd), rf::usd(row.high.cost_usd));
      } else {
        out += fmt::format("| {} | {:.4g}{} | {:.4g}{} | {} | {} | {:.2f} | {:.2f} |\n", cell(row.input), row.low_value,
                           unit, row.high_value, unit, rf::count(row.low.tokens), rf::count(row.high.tokens),
                           row.low.cost_usd / row.low.tokens * 1e6, row.high.cost_usd / row.high.tokens * 1e6);
      }
    }
  }
  out += "\n## Assumptions\n\n";
  for (const auto& line : report.assumptions) {
    out += fmt::format("- {}\n", cell(line));
  }
  return out;
}

} // namespace cuboid::sim::analysis
