// `cuboid simulate`: build the step's TaskGraph for a scenario and replay it on the simulated cluster.
#include "model/cost_model.hpp"
#include "model/schedule.hpp"
#include "model/step_builder.hpp"
#include "model/timeline.hpp"
#include "sim/analysis/result_json.hpp"
#include "sim/simulator.hpp"
#include "tools/commands.hpp"
#include "tools/plan_options.hpp"
#include "tools/profile_options.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <memory>

namespace cuboid::tools {

namespace {
struct SimulateOptions {
  ScenarioFlags scenario;
  ProfileFlags profile;
  bool json = false;
  bool all_ranks = false;
  std::string trace_path;
};

// The layer split of a plan with Megatron-Core's embedding/loss accounting, one "# split" line, e.g. Llama 3.1 405B
// pp 8 vp 8: "layers per stage 15,16,16,16,16,16,16,15 (... virtual stage 0: embedding + 1 layer, 63: 1 layer +
// loss)". Empty for other plans (their output stays as it was).
std::string split_line(const model::ModelSpec& spec, const model::Plan& plan) {
  if (!plan.accounts_in_pipeline_split()) {
    return "";
  }
  const bool embedding = plan.account_for_embedding_in_pipeline_split;
  const bool loss = plan.account_for_loss_in_pipeline_split;
  const std::int64_t slots = spec.num_layers + (embedding ? 1 : 0) + (loss ? 1 : 0);
  const int last_virtual = plan.pp * plan.vp - 1;
  const auto layers_of = [&](int virtual_stage) {
    const model::StageChunk at = model::locate_virtual_stage(plan, virtual_stage);
    return model::chunk_layouts(plan, spec.num_layers, at.stage)[static_cast<std::size_t>(at.chunk)].num_layers;
  };
  const auto layers_text = [](int count) { return fmt::format("{} layer{}", count, count == 1 ? "" : "s"); };
  return fmt::format("# split    layers per stage {} ({} counted as a layer: {} slots, {} per model chunk; "
                     "virtual stage 0: {}{}, {}: {}{})\n",
                     fmt::join(model::layers_per_stage(plan, spec.num_layers), ","),
                     embedding && loss ? "embedding and loss each" : (embedding ? "embedding" : "loss"), slots,
                     slots / (plan.pp * plan.vp),
                     embedding ? "embedding + " : "", layers_text(layers_of(0)), last_virtual,
                     layers_text(layers_of(last_virtual)), loss ? " + loss" : "");
}

// Inserts `line` after the summary's "# plan" line.
std::string with_split_line(const std::string& summary, const std::string& line) {
  const std::size_t plan_at = summary.find("# plan");
  const std::size_t end = plan_at == std::string::npos ? std::string::npos : summary.find('\n', plan_at);
  if (line.empty() || end == std::string::npos) {
    return line + summary;
  }
  return summary.substr(0, end + 1) + line + summary.substr(end + 1);
}

int run_simulate(const SimulateOptions& options) {
  const model::Scenario scenario = resolve_scenario(options.scenario);
  const model::CostProfile profile = resolve_profile(options.profile, options.scenario.cluster, scenario.cluster);
  const model::CostModel cost(scenario.cluster, profile, scenario.plan);
  const auto instantiation = options.all_ranks ? model::Instantiation::AllRanks : model::Instantiation::RankClasses;
  const model::TaskGraph graph = model::build_step_graph(scenario.model, scenario.cluster, scenario.plan, instantiation);
  sim::SimOptions sim_options;
  sim_options.record_timeline = !options.trace_path.empty();
  const sim::SimResult result = sim::simulate(graph, cost, sim_options);
  if (!options.trace_path.empty()) {
    model::write_chrome_trace(options.trace_path, {model::TraceSet{"predicted", sim::to_timeline(graph, result)}});
  }
  if (options.json) {
    std::puts(sim::analysis::simulation_to_json(graph, cost, result).dump(2).c_str());
  } else {
    std::fputs(with_split_line(sim::analysis::format_summary(graph, cost, result),
                               split_line(scenario.model, scenario.plan))
                   .c_str(),
               stdout);
    if (!options.trace_path.empty()) {
      std::fputs(fmt::format("\ntrace written to {} (open in https://ui.perfetto.dev)\n", options.trace_path).c_str(),
                 stdout);
    }
  }
  return 0;
}
} // namespace

void add_simulate_command(CLI::App& app, Action& action) {
  auto options = std::make_shared<SimulateOptions>();
  CLI::App* cmd = app.add_subcommand("simulate", "Predict step time, throughput and memory of one plan");
  add_scenario_flags(*cmd, options->scenario);
  add_profile_flags(*cmd, options->profile);
  cmd->add_flag("--json", options->json, "Print one JSON object instead of the table");
  cmd->add_flag("--all-ranks", options->all_ranks, "Materialise every rank (default: one rank class per stage)");
  cmd->add_option("--trace", options->trace_path, "Write a Chrome/Perfetto trace of the predicted step");
  cmd->callback([options, &action] { action = [options] { return run_simulate(*options); }; });
}

} // namespace cuboid::tools
