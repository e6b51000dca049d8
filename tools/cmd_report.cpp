// `cuboid report`: the capacity-planning report. For each GPU type and count it runs the layout search, then prices
// the best plan (time to train, GPU-hours, USD, energy, goodput under failures, one straggler, sensitivity) and
// prints a terminal summary, --json, --markdown, or writes a self-contained HTML page with --out FILE.html.
#include "model/atomic_file.hpp"
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "sim/analysis/report.hpp"
#include "tools/commands.hpp"
#include "tools/plan_options.hpp"
#include "tools/profile_options.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

namespace cuboid::tools {

namespace {
constexpr std::int64_t DEFAULT_GBS = 1536; // GPT-3 175B, Narayanan et al. SC21 sec. 5.1

struct ReportFlags {
  ModelFlags model;
  std::optional<double> tokens;
  std::optional<double> days;
  std::vector<std::string> gpus{"a100-80gb", "h100-sxm", "h200"};
  std::vector<int> num_gpus{1024, 2048, 4096};
  std::optional<int> gpus_per_node;
  std::optional<std::int64_t> global_batch_size;
  ProfileFlags profile;
  std::vector<std::string> prices;           // "gpu=usd_per_gpu_hour"
  double pue = sim::analysis::DEFAULT_PUE;
  double server_overhead = sim::analysis::DEFAULT_SERVER_OVERHEAD;
  double mtbf_gpu_hours = sim::analysis::DEFAULT_MTBF_GPU_HOURS;
  std::optional<double> checkpoint_write_s;
  double restart_s = sim::analysis::DEFAULT_RESTART_S;
  double straggler_slowdown = 0.0;
  double sensitivity = 0.2;
  std::string objective = "balanced";
  double cost_tolerance = 0.1;
  std::vector<int> tp;
  std::vector<int> pp;
  std::vector<std::int64_t> micro_batch_size;
  std::vector<std::string> schedule;
  std::vector<std::string> recompute;
  std::vector<std::string> precision{"bf16"};
  std::vector<int> zero; // --- ZeRO / FSDP --- stages to search (empty: 0 and 1)
  std::vector<int> cp;   // --- context parallelism --- CP sizes to search (empty: 1)
  std::vector<int> ep;   // --- mixture of experts --- EP sizes to search (empty: every valid one for MoE models)
  int jobs = 0;
  std::string out_path;
  bool json = false;
  bool markdown = false;
};

std::map<std::string, double> parse_prices(const std::vector<std::string>& entries,
                                           const std::vector<std::string>& gpus) {
  std::map<std::string, double> out;
  for (const auto& entry : entries) {
    const std::size_t eq = entry.find('=');
    if (eq == std::string::npos) {
      throw InputError(input_message("command line", "--price-per-gpu-hour",
                                     fmt::format("'{}' is not GPU=USD (e.g. h100-sxm=2.5)", entry)));
    }
    const std::string gpu = entry.substr(0, eq);
    if (std::find(gpus.begin(), gpus.end(), gpu) == gpus.end()) {
      throw InputError(input_message("command line", "--price-per-gpu-hour",
                                     fmt::format("'{}' is not one of the --gpu types{}", gpu,
                                                 valid_values_hint(gpu, gpus))));
    }
    double value = 0.0;
    try {
      std::size_t used = 0;
      value = std::stod(entry.substr(eq + 1), &used);
      if (used != entry.size() - eq - 1) {
        value = -1.0;
      }
    } catch (const std::exception&) {
      value = -1.0;
    }
    if (!std::isfinite(value) || value <= 0.0) {
      throw InputError(input_message("command line", "--price-per-gpu-hour",
                                     fmt::format("'{}' must be a positive price in USD per GPU-hour",
                                                 entry.substr(eq + 1))));
    }
    out[gpu] = value;
  }
  return out;
}

sim::analysis::ReportObjective parse_objective(const std::string& text) {
  if (text == "balanced") {
    return sim::analysis::ReportObjective::Balanced;
  }
  if (text == "cost") {
    return sim::analysis::ReportObjective::Cost;
  }
  if (text == "time") {
    return sim::analysis::ReportObjective::Time;
  }
  throw InputError(input_message("command line", "--objective",
                                 fmt::format("'{}' is not an objective{}", text,
                                             valid_values_hint(text, {"balanced", "cost", "time"}))));
}

sim::analysis::ReportGpu make_gpu(const ReportFlags& flags, const std::string& name,
                                  const std::map<std::string, double>& prices) {
  sim::analysis::ReportGpu gpu;
  gpu.cluster = model::make_cluster(name, flags.num_gpus.front(), flags.gpus_per_node.value_or(0), "command line");
  gpu.profile = resolve_profile(flags.profile, ClusterFlags{}, gpu.cluster);
  const auto price = prices.find(name);
  if (price != prices.end()) {
    gpu.price.gpu = name;
    gpu.price.usd_per_gpu_hour = price->second;
    gpu.price.provider = "user";
    gpu.price.source = "--price-per-gpu-hour";
    gpu.price.user_override = true;
  } else if (const auto row = sim::analysis::default_price(name)) {
    gpu.price = *row;
  } else {
    throw InputError(input_message("command line", "--price-per-gpu-hour",
                                   fmt::format("no default price for {} in scenarios/hardware/prices.csv; pass "
                                               "--price-per-gpu-hour {}=USD",
                                               name, name)));
  }
  if (gpu.cluster.gpu.power_w > 0.0) {
    gpu.power = {gpu.cluster.gpu.power_w, gpu.cluster.gpu.source.empty() ? "GPU catalog" : gpu.cluster.gpu.source};
  } else if (const auto power = sim::analysis::default_power(name)) {
    gpu.power = *power;
  } else {
    throw InputError(input_message("command line", "--gpu", fmt::format("no board power known for {}", name)));
  }
  return gpu;
}

sim::analysis::ReportInputs build_inputs(const ReportFlags& flags) {
  sim::analysis::ReportInputs inputs;
  inputs.model = model::load_model(flags.model.model);
  apply_model_flags(flags.model, inputs.model);
  if (flags.tokens.has_value() == flags.days.has_value()) {
    throw InputError(input_message("command line", "--tokens",
                                   "give exactly one of --tokens N (train N tokens) or --days D (train for D days)"));
  }
  inputs.goal = flags.tokens ? sim::analysis::ReportGoal::Tokens : sim::analysis::ReportGoal::Days;
  inputs.tokens = flags.tokens.value_or(0.0);
  inputs.days = flags.days.value_or(0.0);
  if (flags.global_batch_size) {
    inputs.space.global_batch_size = *flags.global_batch_size;
  } else if (flags.model.model == "gpt3-175b") {
    inputs.space.global_batch_size = DEFAULT_GBS;
  } else {
    throw InputError(input_message("command line", "--global-batch-size",
                                   "is required (the default 1536 belongs to the default model gpt3-175b)"));
  }
  inputs.space.tp = flags.tp;
  inputs.space.pp = flags.pp;
  inputs.space.micro_batch_size = flags.micro_batch_size;
  for (const auto& text : flags.schedule) {
    inputs.space.schedules.push_back(model::parse_schedule(text, "command line: --schedule"));
  }
  for (const auto& text : flags.recompute) {
    inputs.space.recompute.push_back(model::parse_recompute(text, "command line: --recompute"));
  }
  for (const auto& text : flags.precision) {
    inputs.space.precision.push_back(model::parse_precision(text, "command line: --precision"));
  }
  inputs.space.zero_stages = flags.zero; // --- ZeRO / FSDP --- (checked by enumerate_space)
  // --- context parallelism / mixture of experts ---
  for (const auto& [name, values] : {std::pair<const char*, const std::vector<int>*>{"--cp", &flags.cp},
                                     std::pair<const char*, const std::vector<int>*>{"--ep", &flags.ep}}) {
    for (const int value : *values) {
      if (value <= 0) {
        throw InputError(input_message("command line", name, fmt::format("{} must be positive", value)));
      }
    }
  }
  inputs.space.cp = flags.cp;
  inputs.space.ep = flags.ep;
  for (const int count : flags.num_gpus) {
    if (count <= 0) {
      throw InputError(input_message("command line", "--num-gpus", fmt::format("{} must be positive", count)));
    }
  }
  inputs.num_gpus = flags.num_gpus;
  const auto prices = parse_prices(flags.prices, flags.gpus);
  for (const auto& name : flags.gpus) {
    inputs.gpus.push_back(make_gpu(flags, name, prices));
  }
  inputs.failures.mtbf_gpu_hours = flags.mtbf_gpu_hours;
  inputs.failures.restart_s = flags.restart_s;
  inputs.failures.checkpoint_write_s =
      flags.checkpoint_write_s.value_or(sim::analysis::default_checkpoint_write_s(inputs.model));
  inputs.pue = flags.pue;
  inputs.server_overhead = flags.server_overhead;
  inputs.straggler_slowdown = flags.straggler_slowdown;
  inputs.sensitivity_fraction = flags.sensitivity;
  inputs.objective = parse_objective(flags.objective);
  inputs.cost_tolerance = flags.cost_tolerance;
  inputs.jobs = flags.jobs;
  return inputs;
}

int run_report_command(const ReportFlags& flags) {
  const sim::analysis::Report report = sim::analysis::build_report(build_inputs(flags));
  if (!flags.out_path.empty()) {
    const std::string extension = std::filesystem::path(flags.out_path).extension().string();
    const std::string content = extension == ".json" ? sim::analysis::report_to_json(report).dump(2) + "\n"
                                : extension == ".md" ? sim::analysis::format_report_markdown(report)
                                                     : sim::analysis::format_report_html(report);
    write_file_atomically(flags.out_path, content);
  }
  if (flags.json) {
    std::puts(sim::analysis::report_to_json(report).dump(2).c_str());
  } else if (flags.markdown) {
    std::fputs(sim::analysis::format_report_markdown(report).c_str(), stdout);
  } else {
    std::fputs(sim::analysis::format_report_text(report).c_str(), stdout);
    if (!flags.out_path.empty()) {
      std::fputs(fmt::format("# wrote {}\n", flags.out_path).c_str(), stdout);
    }
  }
  return 0;
}
} // namespace

void add_report_command(CLI::App& app, Action& action) {
  auto flags = std::make_shared<ReportFlags>();
  CLI::App* cmd = app.add_subcommand(
      "report", "Capacity plan: which GPUs, how many, which layout, how many days and dollars (HTML, Markdown, JSON)");
  add_model_flags(*cmd, flags->model);
  cmd->add_option("--tokens", flags->tokens, "Train this many tokens, e.g. 300e9");
  cmd->add_option("--days", flags->days, "Or: train for this many days and report the tokens reached");
  cmd->add_option("--gpu", flags->gpus, "GPU types to compare")->delimiter(',')->capture_default_str();
  cmd->add_option("--num-gpus", flags->num_gpus, "GPU counts to compare")->delimiter(',')->capture_default_str();
  cmd->add_option("--gpus-per-node", flags->gpus_per_node, "GPUs per node (default: the system's)");
  cmd->add_option("--global-batch-size,--gbs", flags->global_batch_size, "Global batch (sequences)");
  add_profile_flags(*cmd, flags->profile);
  cmd->add_option("--price-per-gpu-hour", flags->prices,
                  "USD per GPU-hour overrides, e.g. h100-sxm=2.5,a100-80gb=1.8 (default: prices.csv)")
      ->delimiter(',');
  cmd->add_option("--pue", flags->pue, "Data-centre PUE (facility / IT power)")->capture_default_str();
  cmd->add_option("--server-overhead", flags->server_overhead, "Server power / GPU board power")
      ->capture_default_str();
  cmd->add_option("--mtbf-gpu-hours", flags->mtbf_gpu_hours, "Per-GPU MTBF in hours (Llama 3: ~50,700)")
      ->capture_default_str();
  cmd->add_option("--checkpoint-write-s", flags->checkpoint_write_s,
                  "Seconds to write one checkpoint (default: 14 B/parameter at 50 GB/s)");
  cmd->add_option("--restart-s", flags->restart_s, "Seconds to restart after a failure")->capture_default_str();
  cmd->add_option("--straggler-slowdown", flags->straggler_slowdown,
                  "Report what one GPU this many times slower costs, e.g. 1.2");
  cmd->add_option("--sensitivity", flags->sensitivity, "Tornado swing of each uncertain input (fraction)")
      ->capture_default_str();
  cmd->add_option("--objective", flags->objective, "Recommend by: balanced, cost or time")->capture_default_str();
  cmd->add_option("--cost-tolerance", flags->cost_tolerance,
                  "balanced: fastest option within this fraction of the cheapest per token")
      ->capture_default_str();
  cmd->add_option("--tp,--tensor-model-parallel-size", flags->tp, "TP sizes to search")->delimiter(',');
  cmd->add_option("--pp,--pipeline-model-parallel-size", flags->pp, "PP sizes to search")->delimiter(',');
  cmd->add_option("--micro-batch-size,--mbs", flags->micro_batch_size, "Micro-batch sizes to search")->delimiter(',');
  cmd->add_option("--schedule", flags->schedule, "Schedules to search: gpipe, 1f1b, interleaved, zb-h1, zb-v")->delimiter(',');
  cmd->add_option("--recompute", flags->recompute, "Recompute modes to search: none, selective, full")
      ->delimiter(',');
  cmd->add_option("--precision", flags->precision, "Precisions to search")->delimiter(',')->capture_default_str();
  cmd->add_option("--zero", flags->zero, "ZeRO stages to search, e.g. 0,1,2,3 (default 0,1)")->delimiter(',');
  cmd->add_option("--cp,--context-parallel-size", flags->cp, "Context-parallel sizes to search, e.g. 1,2 (default 1)")
      ->delimiter(',');
  cmd->add_option("--ep,--expert-model-parallel-size", flags->ep,
                  "Expert-parallel sizes to search (MoE models; default: every ep dividing dp and the experts)")
      ->delimiter(',');
  cmd->add_option("--jobs,-j", flags->jobs, "Search threads (default: all cores)");
  cmd->add_option("--out", flags->out_path, "Write the report to FILE (.html, .md or .json by extension)");
  cmd->add_flag("--json", flags->json, "Print the report as one JSON object");
  cmd->add_flag("--markdown", flags->markdown, "Print the report as Markdown");
  cmd->callback([flags, &action] { action = [flags] { return run_report_command(*flags); }; });
}

} // namespace cuboid::tools
