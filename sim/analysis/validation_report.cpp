// Summary (MAPE per source), JSON and terminal-table output of a ValidationReport (see validation.hpp). Fixed precision, no paths beyond the
// CSV name given, no wall clock: the output is deterministic for golden tests.
#include "sim/analysis/validation.hpp"

#include <fmt/format.h>

#include <cmath>

namespace cuboid::sim::analysis {

namespace {

nlohmann::json summary_json(const SourceSummary& summary) {
  return {{"rows", summary.rows}, {"mape_pct", summary.mape_pct}, {"bias_pct", summary.bias_pct}};
}

std::string optional_gib(const std::optional<double>& value) {
  return value ? fmt::format("{:.1f}", *value) : std::string("-");
}

SourceSummary summary_of(const std::vector<const ValidationRow*>& rows) {
  SourceSummary summary;
  for (const ValidationRow* row : rows) {
    ++summary.rows;
    summary.mape_pct += std::abs(row->error_pct);
    summary.bias_pct += row->error_pct;
  }
  if (summary.rows > 0) {
    summary.mape_pct /= summary.rows;
    summary.bias_pct /= summary.rows;
  }
  return summary;
}

} // namespace

void summarise(ValidationReport& report) {
  report.ok = report.skipped = report.unsupported = report.infeasible = 0;
  std::vector<const ValidationRow*> all;
  std::map<std::string, std::vector<const ValidationRow*>> by_source;
  double mem_sum = 0.0;
  int mem_rows = 0;
  for (const ValidationRow& row : report.rows) {
    switch (row.status) {
    case RunStatus::Ok:
      ++report.ok;
      all.push_back(&row);
      by_source[row.source].push_back(&row);
      if (row.measured_mem_gib && row.predicted_mem_gib && *row.measured_mem_gib > 0.0) {
        mem_sum += std::abs(*row.predicted_mem_gib - *row.measured_mem_gib) / *row.measured_mem_gib;
        ++mem_rows;
      }
      break;
    case RunStatus::Skipped:
      ++report.skipped;
      break;
    case RunStatus::Unsupported:
      ++report.unsupported;
      break;
    case RunStatus::Infeasible:
      ++report.infeasible;
      break;
    }
  }
  report.overall = summary_of(all);
  report.per_source.clear();
  for (const auto& [source, rows] : by_source) {
    report.per_source[source] = summary_of(rows);
  }
  report.memory_mape_pct = mem_rows > 0 ? std::optional<double>(100.0 * mem_sum / mem_rows) : std::nullopt;
}

nlohmann::json to_json(const ValidationReport& report) {
  nlohmann::json rows = nlohmann::json::array();
  for (const ValidationRow& row : report.rows) {
    nlohmann::json item = {{"id", row.id}, {"source", row.source}, {"status", to_string(row.status)}};
    if (row.status != RunStatus::Ok) {
      item["reason"] = row.reason;
    } else {
      item["measured_step_s"] = row.measured_step_s;
      item["predicted_step_s"] = row.predicted_step_s;
      item["error_pct"] = row.error_pct;
      item["measured_basis"] = row.basis;
      item["dominant"] = row.dominant;
      item["shares"] = {{"compute", row.shares.compute},
                        {"exposed_comm", row.shares.exposed_comm},
                        {"bubble", row.shares.bubble},
                        {"recompute", row.shares.recompute},
                        {"optimizer", row.shares.optimizer},
                        {"tp_comm", row.shares.tp_comm},
                        {"pp_comm", row.shares.pp_comm},
                        {"dp_comm", row.shares.dp_comm}};
      item["layout"] = row.layout;
      if (row.measured_mem_gib) {
        item["measured_peak_mem_gib"] = *row.measured_mem_gib;
      }
      if (row.predicted_mem_gib) {
        item["predicted_peak_mem_gib"] = *row.predicted_mem_gib;
      }
    }
    item["assumptions"] = row.assumptions;
    rows.push_back(std::move(item));
  }
  nlohmann::json per_source = nlohmann::json::object();
  for (const auto& [source, summary] : report.per_source) {
    per_source[source] = summary_json(summary);
  }
  nlohmann::json out = {{"csv", report.csv_path},
                        {"counts",
                         {{"ok", report.ok},
                          {"skipped", report.skipped},
                          {"unsupported", report.unsupported},
                          {"infeasible", report.infeasible}}},
                        {"overall", summary_json(report.overall)},
                        {"per_source", per_source},
                        {"profile_assumptions", report.profile_assumptions},
                        {"rows", rows}};
  out["memory_mape_pct"] = report.memory_mape_pct ? nlohmann::json(*report.memory_mape_pct) : nlohmann::json();
  return out;
}

std::string format_table(const ValidationReport& report) {
  std::string out = fmt::format("# cuboid validate: {}\n", report.csv_path);
  out += fmt::format("# {:<46} {:<18} {:>10} {:>10} {:>8} {:<12} {:>5} {:>5} {:>5} {:>6} {:>6}  {}\n", "id", "source",
                     "measured", "predicted", "error", "dominant", "comp", "comm", "bubl", "mem", "mem", "layout");
  out += fmt::format("# {:<46} {:<18} {:>10} {:>10} {:>8} {:<12} {:>5} {:>5} {:>5} {:>6} {:>6}\n", "", "", "(s)",
                     "(s)", "(%)", "", "(%)", "(%)", "(%)", "(GiB)", "pred");
  std::string not_ok;
  for (const ValidationRow& row : report.rows) {
    if (row.status != RunStatus::Ok) {
      not_ok += fmt::format("#   {:<46} {:<12} {}\n", row.id, to_string(row.status), row.reason);
      continue;
    }
    out += fmt::format("  {:<46} {:<18} {:>10.3f} {:>10.3f} {:>+8.1f} {:<12} {:>5.0f} {:>5.0f} {:>5.0f} {:>6} {:>6}  {}\n",
                       row.id, row.source, row.measured_step_s, row.predicted_step_s, row.error_pct, row.dominant,
                       100.0 * row.shares.compute, 100.0 * row.shares.exposed_comm, 100.0 * row.shares.bubble,
                       optional_gib(row.measured_mem_gib), optional_gib(row.predicted_mem_gib), row.layout);
  }
  out += fmt::format("# rows: {} ok, {} skipped, {} unsupported, {} infeasible\n", report.ok, report.skipped,
                     report.unsupported, report.infeasible);
  if (!not_ok.empty()) {
    out += "# not predicted:\n" + not_ok;
  }
  out += fmt::format("# {:<20} {:>5} {:>9} {:>9}\n", "source", "rows", "MAPE(%)", "bias(%)");
  for (const auto& [source, summary] : report.per_source) {
    out += fmt::format("  {:<20} {:>5} {:>9.1f} {:>+9.1f}\n", source, summary.rows, summary.mape_pct,
                       summary.bias_pct);
  }
  out += fmt::format("  {:<20} {:>5} {:>9.1f} {:>+9.1f}\n", "overall", report.overall.rows, report.overall.mape_pct,
                     report.overall.bias_pct);
  if (report.memory_mape_pct) {
    out += fmt::format("# peak memory MAPE over rows with a measurement: {:.1f} %\n", *report.memory_mape_pct);
  }
  for (const auto& [gpu, lines] : report.profile_assumptions) {
    out += fmt::format("# cost model assumptions for {}:\n", gpu);
    for (const auto& line : lines) {
      out += "#   " + line + "\n";
    }
  }
  return out;
}

} // namespace cuboid::sim::analysis
