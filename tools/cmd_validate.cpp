// `cuboid validate --runs FILE.csv`: predicts every published training run of a CSV (the format of
// scenarios/validation/published_runs.csv, columns in scenarios/validation/README.md) and prints measured vs predicted
// step time, error, the dominant cost and every assumption per row, then MAPE overall and per source (or --json).
// --runs is required: the shipped CSV lives in the source tree (scenarios/validation/), not next to an installed binary.
#include "model/errors.hpp"
#include "sim/analysis/validation.hpp"
#include "tools/commands.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <memory>

namespace cuboid::tools {

namespace {

struct ValidateFlags {
  std::string runs_path;
  std::string profile_path;
  std::string source;
  bool no_fp8 = false;
  bool json = false;
  std::string trace_dir;
};

std::string assumptions_text(const sim::analysis::ValidationReport& report) {
  std::string out = "# assumptions per row:\n";
  for (const auto& row : report.rows) {
    if (row.assumptions.empty()) {
      continue;
    }
    out += fmt::format("#   {}:\n", row.id);
    for (const auto& line : row.assumptions) {
      out += fmt::format("#     - {}\n", line);
    }
  }
  return out;
}

int run_validate_command(const ValidateFlags& flags) {
  // Checked here so that a missing file is reported with the flag that named it (read_csv_table repeats the check).
  if (!std::filesystem::is_regular_file(flags.runs_path)) {
    throw InputError(input_message("command line", "--runs",
                                   fmt::format("'{}' is not a readable file (expected a CSV in the format of "
                                               "scenarios/validation/published_runs.csv)",
                                               flags.runs_path)));
  }
  sim::analysis::ValidateOptions options;
  if (!flags.profile_path.empty()) {
    options.profile_path = flags.profile_path;
  }
  options.source_filter = flags.source;
  options.include_fp8 = !flags.no_fp8;
  if (!flags.trace_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(flags.trace_dir, error);
    if (error || !std::filesystem::is_directory(flags.trace_dir)) {
      throw InputError(input_message("command line", "--trace-dir",
                                     fmt::format("'{}' is not a directory that can be created ({})", flags.trace_dir,
                                                 error ? error.message() : "a file of that name exists")));
    }
    options.trace_dir = flags.trace_dir;
  }
  const sim::analysis::ValidationReport report = sim::analysis::validate_runs(flags.runs_path, options);
  if (!flags.source.empty() && report.rows.empty()) {
    throw InputError(input_message("command line", "--source",
                                   fmt::format("'{}' matches no row's source or id in {} (sources: sc21, bloom, "
                                               "megatron-lm-readme, nemo, dgxc)",
                                               flags.source, flags.runs_path)));
  }
  if (flags.json) {
    std::puts(sim::analysis::to_json(report).dump(2).c_str());
  } else {
    std::fputs(sim::analysis::format_table(report).c_str(), stdout);
    std::fputs(assumptions_text(report).c_str(), stdout);
  }
  return 0;
}

} // namespace

void add_validate_command(CLI::App& app, Action& action) {
  auto flags = std::make_shared<ValidateFlags>();
  CLI::App* cmd = app.add_subcommand(
      "validate", "Predict published training runs (CSV) and report the error per row, MAPE overall and per source");
  cmd->add_option("--runs", flags->runs_path,
                  "CSV of measured runs, e.g. scenarios/validation/published_runs.csv (columns: "
                  "scenarios/validation/README.md)")
      ->required();
  cmd->add_option("--profile", flags->profile_path,
                  "Cost profile YAML used for every row (default: the shipped profile of each row's GPU)");
  cmd->add_option("--source", flags->source, "Keep only rows whose source kind or id contains this, e.g. dgxc");
  cmd->add_flag("--no-fp8", flags->no_fp8, "Skip FP8 rows");
  cmd->add_flag("--json", flags->json, "Print the report as one JSON object");
  cmd->add_option("--trace-dir", flags->trace_dir,
                  "Write a Chrome/Perfetto trace of each scored row's predicted step to DIR/<id>.json");
  cmd->callback([flags, &action] { action = [flags] { return run_validate_command(*flags); }; });
}

} // namespace cuboid::tools
