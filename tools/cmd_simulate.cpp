// `cuboid simulate`: build the step's TaskGraph for a scenario and replay it on the simulated cluster.
#include "model/cost_model.hpp"
#include "model/step_builder.hpp"
#include "model/timeline.hpp"
#include "sim/analysis/result_json.hpp"
#include "sim/simulator.hpp"
#include "tools/commands.hpp"
#include "tools/plan_options.hpp"
#include "tools/profile_options.hpp"

#include <fmt/format.h>

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
    std::fputs(sim::analysis::format_summary(graph, cost, result).c_str(), stdout);
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
