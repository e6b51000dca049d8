// `cuboid search`: the fastest DP/TP/PP layouts (and micro-batch, schedule, recompute, SP, distributed optimizer)
// for a model on a cluster. Prints the top-k, writes every plan to --csv, resumes with --resume, explains a plan
// against the best with --explain, and splits the work across MPI ranks under mpirun.
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "sim/analysis/csv.hpp"
#include "sim/analysis/result_json.hpp"
#include "sim/analysis/search.hpp"
#include "sim/analysis/search_csv.hpp"
#include "model/atomic_file.hpp"
#include "tools/commands.hpp"
#include "tools/plan_options.hpp"
#include "tools/profile_options.hpp"
#include "tools/search_explain.hpp"
#include "tools/search_split.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <unistd.h>

namespace cuboid::tools {

namespace {
constexpr double GB = 1e9;
constexpr std::int64_t DEFAULT_GBS = 1536; // GPT-3 175B, Narayanan et al. SC21 sec. 5.1
constexpr int DEFAULT_NUM_GPUS = 1024;

struct SearchFlags {
  ModelFlags model;
  std::optional<std::string> gpu;
  std::optional<std::string> system;
  std::vector<int> num_gpus;
  std::optional<int> gpus_per_node;
  std::optional<std::string> profile_path;
  ProfileFlags profile;
  std::optional<std::int64_t> global_batch_size;
  std::vector<int> tp;
  std::vector<int> pp;
  std::vector<int> vp;
  std::vector<std::int64_t> micro_batch_size;
  std::vector<std::string> schedule;
  std::vector<std::string> recompute;
  std::vector<std::string> sequence_parallel;
  std::vector<std::string> distributed_optimizer;
  std::vector<std::string> precision;
  std::vector<int> zero; // --- ZeRO / FSDP ---
  bool allow_tp_across_nodes = false;
  std::vector<int> ep; // --- mixture of experts ---
  std::size_t top = 10;
  int jobs = 0;
  std::string csv_path;
  bool json = false;
  bool resume = false;
  std::string explain;
  // --- context parallelism ---
  std::vector<int> cp;
  std::vector<std::string> cp_comm_type;
};

std::vector<bool> parse_on_off(const std::vector<std::string>& values, const char* flag) {
  std::vector<bool> out;
  for (const auto& value : values) {
    if (value == "on" || value == "true") {
      out.push_back(true);
    } else if (value == "off" || value == "false") {
      out.push_back(false);
    } else {
      throw InputError(input_message("command line", flag,
                                     fmt::format("'{}' is not on or off{}", value,
                                                 valid_values_hint(value, {"on", "off"}))));
    }
  }
  return out;
}

sim::analysis::SearchSpace build_space(const SearchFlags& flags, std::int64_t global_batch) {
  sim::analysis::SearchSpace space;
  space.num_gpus = flags.num_gpus;
  space.tp = flags.tp;
  space.pp = flags.pp;
  space.vp = flags.vp;
  space.micro_batch_size = flags.micro_batch_size;
  for (const auto& text : flags.schedule) {
    space.schedules.push_back(model::parse_schedule(text, "command line: --schedule"));
  }
  for (const auto& text : flags.recompute) {
    space.recompute.push_back(model::parse_recompute(text, "command line: --recompute"));
  }
  for (const auto& text : flags.precision) {
    space.precision.push_back(model::parse_precision(text, "command line: --precision"));
  }
  space.sequence_parallel = parse_on_off(flags.sequence_parallel, "--sequence-parallel");
  space.distributed_optimizer = parse_on_off(flags.distributed_optimizer, "--distributed-optimizer");
  space.global_batch_size = global_batch;
  space.allow_tp_across_nodes = flags.allow_tp_across_nodes;
  space.ep = flags.ep; // --- mixture of experts ---
  for (const int value : flags.ep) {
    if (value <= 0) {
      throw InputError(input_message("command line", "--ep", fmt::format("{} must be positive", value)));
    }
  }
  // --- context parallelism ---
  for (const int value : flags.cp) {
    if (value <= 0) {
      throw InputError(input_message("command line", "--cp", fmt::format("{} must be positive", value)));
    }
  }
  space.cp = flags.cp;
  for (const auto& text : flags.cp_comm_type) {
    space.cp_comm_types.push_back(model::parse_cp_comm_type(text, "command line: --cp-comm-type"));
  }
  space.zero_stages = flags.zero; // --- ZeRO / FSDP --- (checked by enumerate_space)
  for (const int value : flags.tp) {
    if (value <= 0) {
      throw InputError(input_message("command line", "--tp", fmt::format("{} must be positive", value)));
    }
  }
  for (const int value : flags.pp) {
    if (value <= 0) {
      throw InputError(input_message("command line", "--pp", fmt::format("{} must be positive", value)));
    }
  }
  for (const int value : flags.num_gpus) {
    if (value <= 0) {
      throw InputError(input_message("command line", "--num-gpus", fmt::format("{} must be positive", value)));
    }
  }
  return space;
}

std::string plan_columns(const model::Plan& plan) {
  return fmt::format("{:>3} {:>3} {:>5} {:>3} {:>4} {:<11} {:<9} {:>3} {:>3}", plan.tp, plan.pp, plan.dp, plan.vp,
                     plan.micro_batch_size, model::to_string(plan.schedule), model::to_string(plan.recompute),
                     plan.sequence_parallel ? "on" : "off",
                     plan.get_zero_stage() >= 2 ? fmt::format("z{}", plan.get_zero_stage())  // --- ZeRO / FSDP ---
                                                : std::string(plan.distributed_optimizer ? "on" : "off"));
}

// --- context parallelism --- " cp2" for a p2p CP plan, " cp2-allgather" / " cp2-a2a" for the others, "" for cp 1.
std::string cp_column(const model::Plan& plan) {
  if (plan.cp <= 1) {
    return {};
  }
  return plan.cp_comm_type == model::CpCommType::P2P
             ? fmt::format(" cp{}", plan.cp)
             : fmt::format(" cp{}-{}", plan.cp, model::to_string(plan.cp_comm_type));
}

std::string format_table(const sim::analysis::SearchResult& result, const std::vector<std::size_t>& rows,
                         const char* title, bool moe) {
  std::string out = fmt::format("# {}\n", title);
  out += fmt::format("# {:>4} {:>5} {:>3} {:>3} {:>5} {:>3} {:>4} {:<11} {:<9} {:>3} {:>3} {:>10} {:>8} {:>6} {:>9} "
                     "{:>7}\n",
                     "rank", "gpus", "tp", "pp", "dp", "vp", "mbs", "schedule", "recompute", "sp", "do", "step",
                     "TFLOP/s", "MFU", "peak mem", "bubble");
  if (moe) { // --- mixture of experts --- one more column, only for MoE models
    out.insert(out.size() - 1, fmt::format(" {:>4}", "ep"));
  }
  out += fmt::format("# {:>4} {:>5} {:>3} {:>3} {:>5} {:>3} {:>4} {:<11} {:<9} {:>3} {:>3} {:>10} {:>8} {:>6} {:>9} "
                     "{:>7}\n",
                     "", "", "", "", "", "", "", "", "", "", "", "(s)", "(/gpu)", "(%)", "(GB)", "(%)");
  if (moe) {
    out.insert(out.size() - 1, fmt::format(" {:>4}", ""));
  }
  std::size_t position = 0;
  for (const std::size_t idx : rows) {
    const auto& outcome = result.plans[idx];
    const auto& sim = *outcome.result;
    out += fmt::format("  {:>4} {:>5} {} {:>10.4f} {:>8.1f} {:>6.1f} {:>9.2f} {:>7.1f}{}\n", ++position,
                       outcome.num_gpus, plan_columns(outcome.plan), sim.step_time_s, sim.model_tflops_per_gpu,
                       100.0 * sim.mfu, sim.peak_memory_bytes / GB, 100.0 * sim.bubble_fraction,
                       cp_column(outcome.plan));
    if (moe) {
      out.insert(out.size() - 1, fmt::format(" {:>4}", outcome.plan.ep));
    }
  }
  return out;
}

nlohmann::json outcome_json(const sim::analysis::PlanOutcome& outcome) {
  nlohmann::json out;
  out["num_gpus"] = outcome.num_gpus;
  out["plan"] = sim::analysis::plan_to_json(outcome.plan);
  if (outcome.plan.ep != 1) { // --- mixture of experts ---
    out["plan"]["ep"] = outcome.plan.ep;
  }
  if (outcome.result) {
    out.update(sim::analysis::result_to_json(*outcome.result));
  }
  out["status"] = sim::analysis::to_string(outcome.status);
  if (!outcome.reason.empty()) {
    out["reason"] = outcome.reason;
  }
  return out;
}

int run_search_command(const SearchFlags& flags) {
  const auto started = std::chrono::steady_clock::now();
  model::ModelSpec spec = model::load_model(flags.model.model);
  apply_model_flags(flags.model, spec);
  const bool default_model = flags.model.model == "gpt3-175b";
  std::int64_t global_batch = 0;
  if (flags.global_batch_size) {
    global_batch = *flags.global_batch_size;
  } else if (default_model) {
    global_batch = DEFAULT_GBS;
  } else {
    throw InputError(input_message("command line", "--global-batch-size",
                                   "is required (the default 1536 belongs to the default model gpt3-175b)"));
  }
  const std::string system_or_gpu = flags.system ? *flags.system : flags.gpu.value_or("a100-80gb");
  const int base_gpus = flags.num_gpus.empty() ? DEFAULT_NUM_GPUS : flags.num_gpus.front();
  const model::ClusterSpec cluster =
      model::make_cluster(system_or_gpu, base_gpus, flags.gpus_per_node.value_or(0), "command line");
  for (const int count : flags.num_gpus) {
    (void)model::make_cluster(system_or_gpu, count, flags.gpus_per_node.value_or(0), "command line");
  }
  ClusterFlags cluster_flags;
  cluster_flags.profile = flags.profile_path;
  const model::CostProfile profile = resolve_profile(flags.profile, cluster_flags, cluster);
  const sim::analysis::SearchSpace space = build_space(flags, global_batch);

  std::unique_ptr<SearchSplit> split = make_search_split();
  const bool is_root = split->rank() == 0;
  sim::analysis::SearchOptions options;
  options.top_k = flags.top;
  options.jobs = flags.jobs;
  const std::string partial_path = flags.csv_path.empty() ? std::string{} : flags.csv_path + ".partial";
  if (flags.resume) {
    if (flags.csv_path.empty()) {
      throw InputError(input_message("command line", "--resume", "needs --csv FILE (the file to resume from)"));
    }
    if (spec.is_moe()) { // --- mixture of experts --- the CSV has no ep column: plans of different ep would merge
      throw InputError(input_message("command line", "--resume",
                                     fmt::format("is not supported for mixture-of-experts models yet ({}: the CSV "
                                                 "does not record ep; valid: run the search without --resume)",
                                                 spec.name)));
    }
    for (const auto& path : {flags.csv_path, partial_path}) {
      std::ifstream in(path);
      if (!in) {
        continue;
      }
      for (auto& outcome : sim::analysis::read_search_csv(in, path)) {
        if (outcome.status == sim::analysis::PlanStatus::Simulated ||
            outcome.status == sim::analysis::PlanStatus::OutOfMemory) {
          if (outcome.result) {
            options.known[sim::analysis::plan_key(outcome.plan, outcome.num_gpus)] = std::move(outcome);
          }
        }
      }
    }
  }
  std::ofstream partial;
  if (is_root && !partial_path.empty()) {
    const bool fresh = !std::filesystem::exists(partial_path);
    partial.open(partial_path, std::ios::app);
    if (!partial) {
      throw InputError(input_message(partial_path, "", "cannot open for writing"));
    }
    if (fresh) {
      partial << sim::analysis::csv_join(sim::analysis::search_csv_header()) << '\n';
    }
  }
  const bool progress = is_root && !flags.json && isatty(STDERR_FILENO) != 0;
  options.on_done = [&](const sim::analysis::PlanOutcome& outcome, std::size_t done, std::size_t total) {
    if (partial.is_open()) {
      partial << sim::analysis::csv_join(sim::analysis::outcome_to_csv(outcome)) << '\n' << std::flush;
    }
    if (progress && (done % 16 == 0 || done == total)) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      const double rate = static_cast<double>(done) / std::max(elapsed, 1e-9);
      std::fputs(fmt::format("\r  simulated {}/{} candidates, {:.0f} plans/s, at most {:.0f} s left   ", done, total,
                             rate, static_cast<double>(total - done) / std::max(rate, 1e-9))
                     .c_str(),
                 stderr);
    }
  };
  // Local evaluation uses threads; the split deals batches across MPI ranks (identity without MPI).
  options.evaluate = split->distribute(
      [&spec, &cluster, &profile, jobs = flags.jobs](const std::vector<sim::analysis::PlanOutcome>& plans) {
        return sim::analysis::evaluate_plans(spec, cluster, profile, plans, jobs);
      });
  const sim::analysis::SearchResult result = sim::analysis::run_search(spec, cluster, profile, space, options);
  if (progress) {
    std::fputs("\n", stderr);
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (!is_root) {
    return 0;
  }
  if (!flags.csv_path.empty()) {
    std::string text = sim::analysis::csv_join(sim::analysis::search_csv_header()) + "\n";
    for (const auto& outcome : result.plans) {
      text += sim::analysis::csv_join(sim::analysis::outcome_to_csv(outcome)) + "\n";
    }
    write_file_atomically(flags.csv_path, text);
    partial.close();
    std::filesystem::remove(partial_path);
  }
  if (flags.json) {
    nlohmann::json out;
    out["model"] = sim::analysis::model_to_json(spec);
    out["cluster"] = sim::analysis::cluster_to_json(cluster);
    out["num_plans"] = result.plans.size();
    out["num_simulated"] = result.num_simulated;
    out["num_resumed"] = result.num_resumed;
    out["best"] = result.top.empty() ? nlohmann::json(nullptr) : outcome_json(result.plans[result.top.front()]);
    out["plans"] = nlohmann::json::array();
    for (const std::size_t idx : result.top) {
      out["plans"].push_back(outcome_json(result.plans[idx]));
    }
    out["pareto_memory"] = nlohmann::json::array();
    for (const std::size_t idx : result.pareto_memory) {
      out["pareto_memory"].push_back(outcome_json(result.plans[idx]));
    }
    out["pareto_gpus"] = nlohmann::json::array();
    for (const std::size_t idx : result.pareto_gpus) {
      out["pareto_gpus"].push_back(outcome_json(result.plans[idx]));
    }
    out["rejected"] = result.rejected_by_reason;
    out["elapsed_s"] = elapsed;
    if (!flags.explain.empty()) {
      out["explain"] = explain_json(spec, cluster, profile, result, flags.explain);
    }
    std::puts(out.dump(2).c_str());
    return 0;
  }
  std::string text = fmt::format("# search: {} on {} x {} ({}), global batch {}\n", spec.name,
                                 fmt::join(space.num_gpus.empty() ? std::vector<int>{cluster.num_gpus} : space.num_gpus,
                                           ","),
                                 cluster.gpu.name, cluster.name, global_batch);
  text += fmt::format("# {} plans in the space, {} simulated, {:.2f} s ({:.0f} plans/s)\n", result.plans.size(),
                      result.num_simulated, elapsed, static_cast<double>(result.plans.size()) / elapsed);
  text += format_table(result, result.top, "fastest plans that fit", spec.is_moe());
  text += "\n";
  text += format_table(result, result.pareto_memory, "Pareto front: step time vs peak memory", spec.is_moe());
  if (result.pareto_gpus.size() > 1 || space.num_gpus.size() > 1) {
    text += "\n";
    text += format_table(result, result.pareto_gpus, "Pareto front: step time vs GPU count", spec.is_moe());
  }
  text += "\n# not simulated, by reason\n";
  for (const auto& [reason, count] : result.rejected_by_reason) {
    text += fmt::format("  {:>7}  {}\n", count, reason);
  }
  if (!flags.explain.empty()) {
    text += "\n";
    text += explain_text(spec, cluster, profile, result, flags.explain);
  }
  std::fputs(text.c_str(), stdout);
  return 0;
}
} // namespace

void add_search_command(CLI::App& app, Action& action) {
  auto flags = std::make_shared<SearchFlags>();
  CLI::App* cmd = app.add_subcommand("search", "Search DP/TP/PP layouts (and more) for the fastest plan that fits");
  add_model_flags(*cmd, flags->model);
  cmd->add_option("--gpu", flags->gpu, "GPU type (default a100-80gb)");
  cmd->add_option("--system", flags->system, "System, e.g. dgx-h100");
  cmd->add_option("--num-gpus", flags->num_gpus, "GPU counts, e.g. 256,512,1024 (default 1024)")->delimiter(',');
  cmd->add_option("--gpus-per-node", flags->gpus_per_node, "GPUs per node (default: the system's)");
  cmd->add_option("--profile", flags->profile_path, "Cost profile YAML");
  add_profile_flags(*cmd, flags->profile);
  cmd->add_option("--global-batch-size,--gbs", flags->global_batch_size, "Global batch (sequences)");
  cmd->add_option("--tp,--tensor-model-parallel-size", flags->tp, "TP sizes to try, e.g. 2,4,8")->delimiter(',');
  cmd->add_option("--pp,--pipeline-model-parallel-size", flags->pp, "PP sizes to try")->delimiter(',');
  cmd->add_option("--vp", flags->vp, "Virtual stages to try (interleaved)")->delimiter(',');
  cmd->add_option("--micro-batch-size,--mbs", flags->micro_batch_size, "Micro-batch sizes to try")->delimiter(',');
  cmd->add_option("--schedule", flags->schedule, "Schedules: gpipe, 1f1b, interleaved, zb-h1, zb-v")->delimiter(',');
  cmd->add_option("--recompute", flags->recompute, "Recompute: none, selective, full")->delimiter(',');
  cmd->add_option("--sequence-parallel", flags->sequence_parallel, "on, off or on,off")->delimiter(',');
  cmd->add_option("--distributed-optimizer", flags->distributed_optimizer, "on, off or on,off")->delimiter(',');
  cmd->add_option("--zero", flags->zero, "ZeRO stages to search, e.g. 0,1,2,3 (default 0,1 = distributed optimizer "
                  "off,on; the table's do column shows z2/z3)")
      ->delimiter(',');
  cmd->add_option("--precision", flags->precision, "bf16, fp16, fp8")->delimiter(',');
  cmd->add_flag("--allow-tp-across-nodes", flags->allow_tp_across_nodes, "Let TP groups span nodes");
  // --- mixture of experts ---
  cmd->add_option("--ep,--expert-model-parallel-size", flags->ep,
                  "Expert-parallel sizes to try (MoE; default: every divisor of dp and the expert count)")
      ->delimiter(',');
  cmd->add_option("--top", flags->top, "How many plans to list")->capture_default_str();
  cmd->add_option("--jobs,-j", flags->jobs, "Threads (default: all cores)");
  cmd->add_option("--csv", flags->csv_path, "Write every plan of the space to this CSV");
  cmd->add_flag("--json", flags->json, "Print one JSON object");
  cmd->add_flag("--resume", flags->resume, "Resume an interrupted search from its --csv file");
  cmd->add_option("--explain", flags->explain, "Compare a plan with the best, e.g. tp=8,pp=16,mbs=1");
  // --- context parallelism ---
  cmd->add_option("--cp,--context-parallel-size", flags->cp,
                  "CP sizes to try (default 1), e.g. 1,2,4; each must divide seq_length/2")
      ->delimiter(',');
  cmd->add_option("--cp-comm-type", flags->cp_comm_type,
                  "CP exchanges to try for cp > 1 (default p2p), e.g. p2p,allgather,a2a")
      ->delimiter(',');
  cmd->callback([flags, &action] { action = [flags] { return run_search_command(*flags); }; });
}

} // namespace cuboid::tools
