// `cuboid run`: trains the plan for real (CPU backend: Eigen + MPI, one process per rank; `mpirun -np N cuboid run
// ...` or a single process) and compares the measured step with the prediction of the same TaskGraph on this
// machine's calibration profile, task by task (same task ids). Rank 0 prints; --json prints one object.
#include "exec/calibration.hpp"
#include "exec/comm_environment.hpp"
#include "model/cpu_device.hpp"
#include "exec/runtime.hpp"
#include "model/cost_model.hpp"
#include "model/errors.hpp"
#include "model/step_builder.hpp"
#include "model/timeline.hpp"
#include "sim/analysis/result_json.hpp"
#include "sim/simulator.hpp"
#include "tools/commands.hpp"
#include "tools/plan_options.hpp"
#include "tools/profile_options.hpp"
#include "tools/run_cuda.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <utility>

namespace cuboid::tools {

namespace {
constexpr const char* WHERE = "command line";
// Without --profile, `cuboid run` measures a quick profile first (shorter repeats than `cuboid calibrate`).
constexpr double QUICK_CALIBRATION_MIN_TIME_S = 0.003;
const std::vector<double> QUICK_ALLREDUCE_BYTES = {16384, 262144, 1 << 20};
constexpr double DEFAULT_TIMEOUT_S = 300.0;
constexpr double MS = 1e3;
constexpr double US = 1e6;

struct RunCliOptions {
  ScenarioFlags scenario;
  ProfileFlags profile;
  std::string backend = "cpu";
  int steps = 10;
  std::uint64_t seed = 1234;
  std::string data_file;
  double timeout_s = DEFAULT_TIMEOUT_S;
  float lr = 0.0f; // 0: the runtime's default
  float clip_grad = 0.0f; // Megatron's --clip-grad (its default is 1.0; here 0 = no clipping, the runtime's default)
  bool json = false;
  std::string trace_path;
  int top_tasks = 8;
  int fault_rank = -1;
  int fault_step = -1;
  std::string fault_kind = "throw";
  std::string attention_kernel = "auto"; // --backend cuda: auto (tensor cores where they apply) or simple
  std::string gemm_algo = "autotune";    // --backend cuda: autotune or heuristic (cuBLASLt algorithm choice)
};

exec::FaultKind parse_fault_kind(const std::string& text) {
  const std::map<std::string, exec::FaultKind> kinds = {{"throw", exec::FaultKind::Throw},
                                                        {"nan", exec::FaultKind::NanLoss},
                                                        {"hang", exec::FaultKind::Hang},
                                                        {"crash", exec::FaultKind::Crash}};
  const auto it = kinds.find(text);
  if (it == kinds.end()) {
    throw InputError(input_message(WHERE, "--inject-fault-kind",
                                   fmt::format("unknown value '{}' (valid: throw, nan, hang, crash)", text)));
  }
  return it->second;
}

// The RunOptions both backends take from the command line (the backend extras are set by the caller).
exec::RunOptions run_options(const RunCliOptions& cli, const model::Scenario& scenario) {
  exec::RunOptions options;
  options.model = scenario.model;
  options.plan = scenario.plan;
  options.cluster = scenario.cluster;
  options.steps = cli.steps;
  options.seed = cli.seed;
  options.data_file = cli.data_file;
  options.timeout_s = cli.timeout_s;
  options.trace = true; // the per-task comparison needs the measured timeline
  if (cli.lr > 0.0f) {
    options.optimizer.lr = cli.lr;
  }
  options.optimizer.max_grad_norm = cli.clip_grad;
  options.fault_rank = cli.fault_rank;
  options.fault_step = cli.fault_step;
  options.fault_kind = parse_fault_kind(cli.fault_kind);
  return options;
}

// The run-only flags shared by --backend cpu and cuda: steps, watchdog timeout, learning rate.
void check_run_flags(const RunCliOptions& cli) {
  if (cli.steps < 1) {
    throw InputError(input_message(WHERE, "--steps", fmt::format("{} (expected an integer >= 1)", cli.steps)));
  }
  if (!std::isfinite(cli.timeout_s) || cli.timeout_s < 0.0) {
    throw InputError(input_message(WHERE, "--timeout",
                                   fmt::format("{} (expected seconds >= 0; 0 disables the watchdog)", cli.timeout_s)));
  }
  if (!std::isfinite(cli.lr) || cli.lr < 0.0f) {
    throw InputError(input_message(WHERE, "--lr", fmt::format("{} (expected a finite number >= 0)", cli.lr)));
  }
  if (!std::isfinite(cli.clip_grad) || cli.clip_grad < 0.0f) {
    throw InputError(input_message(
        WHERE, "--clip-grad", fmt::format("{} (expected a finite gradient norm >= 0; 0 = no clipping)", cli.clip_grad)));
  }
}


// --- context parallelism --- Both runtimes execute Transformer Engine's all-gather CP and Ulysses (a2a)
// (docs/context_parallelism.md). A plan that leaves the exchange at Megatron's default (p2p, no --cp-comm-type) runs,
// and is predicted, as allgather, and the report says so; an explicit p2p is refused by
// exec::validate_context_parallel_run.
void use_run_cp_comm_type(model::Scenario& scenario, const ScenarioFlags& flags) {
  if (scenario.plan.cp > 1 && !flags.plan.cp_comm_type && scenario.plan.cp_comm_type == model::CpCommType::P2P) {
    scenario.plan.cp_comm_type = model::CpCommType::AllGather;
  }
}

// The world size decides --num-gpus; a different explicit value is an error (issue: "the MPI world size must equal
// --num-gpus").
model::Scenario resolve_run_scenario(ScenarioFlags flags, int world_size) {
  if (flags.cluster.num_gpus && *flags.cluster.num_gpus != world_size) {
    throw InputError(input_message(WHERE, "--num-gpus",
                                   fmt::format("{} but this job has {} rank(s) (MPI world size); start it with "
                                               "`mpirun -np {} cuboid run ...` or drop --num-gpus",
                                               *flags.cluster.num_gpus, world_size, *flags.cluster.num_gpus)));
  }
  if (flags.cluster.gpu || flags.cluster.system || flags.cluster.gpus_per_node) {
    throw InputError(input_message(WHERE, "--gpu/--system/--gpus-per-node",
                                   "not used by --backend cpu (it runs on this machine's CPUs, one MPI rank each); "
                                   "they describe clusters for `cuboid simulate`"));
  }
  flags.cluster.num_gpus = world_size;
  model::Scenario scenario = resolve_scenario(flags);
  scenario.cluster = model::cpu_cluster(world_size);
  use_run_cp_comm_type(scenario, flags);
  return scenario;
}

struct TaskError {
  model::TaskId id = 0;
  int rank = 0;
  std::string label;
  double measured_s = 0.0;
  double predicted_s = 0.0;
  double cpu_s = 0.0; // thread CPU time of the measured task (CPU backend; 0 when not recorded)
};

// Measured and predicted durations of the same (task id, rank), largest absolute difference first. `cpu_s`: the
// measured events' thread CPU times (same order; may be empty).
std::vector<TaskError> task_errors(const std::vector<model::TimelineEvent>& measured,
                                   const std::vector<model::TimelineEvent>& predicted,
                                   const std::vector<double>& cpu_s = {}) {
  std::map<std::pair<model::TaskId, int>, const model::TimelineEvent*> by_task;
  for (const auto& event : predicted) {
    by_task.emplace(std::make_pair(event.id, event.rank), &event);
  }
  std::vector<TaskError> out;
  for (std::size_t idx = 0; idx < measured.size(); ++idx) {
    const model::TimelineEvent& event = measured[idx];
    const auto it = by_task.find({event.id, event.rank});
    if (it == by_task.end()) {
      continue;
    }
    out.push_back({event.id, event.rank, event.name, event.end_s - event.start_s,
                   it->second->end_s - it->second->start_s, idx < cpu_s.size() ? cpu_s[idx] : 0.0});
  }
  std::stable_sort(out.begin(), out.end(), [](const TaskError& a, const TaskError& b) {
    return std::abs(a.measured_s - a.predicted_s) > std::abs(b.measured_s - b.predicted_s);
  });
  return out;
}

// Kind of a task from its label: the first two words without digits ("fwd L3 mb2 s0c0 r1" -> "fwd L",
// "dp.allreduce b2 r0" -> "dp.allreduce b").
std::string task_kind(const std::string& label) {
  std::string out;
  int words = 0;
  bool in_word = false;
  for (const char c : label) {
    if (c == ' ') {
      in_word = false;
      continue;
    }
    if (!in_word) {
      if (++words > 2) {
        break;
      }
      if (!out.empty()) {
        out += ' ';
      }
      in_word = true;
    }
    if (c < '0' || c > '9') {
      out += c;
    }
  }
  return out;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n == 0 ? 0.0 : (n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]));
}

struct KindError {
  std::string kind;
  int count = 0;
  double measured_s = 0.0;  // median
  double predicted_s = 0.0; // median
  double cpu_s = 0.0;       // median thread CPU time
};

// Median measured and predicted duration per task kind: robust to the few tasks another process interrupted.
std::vector<KindError> kind_errors(const std::vector<TaskError>& errors) {
  struct Samples {
    std::vector<double> measured;
    std::vector<double> predicted;
    std::vector<double> cpu;
  };
  std::map<std::string, Samples> by_kind;
  for (const auto& e : errors) {
    Samples& samples = by_kind[task_kind(e.label)];
    samples.measured.push_back(e.measured_s);
    samples.predicted.push_back(e.predicted_s);
    samples.cpu.push_back(e.cpu_s);
  }
  std::vector<KindError> out;
  for (const auto& [kind, values] : by_kind) {
    out.push_back({kind, static_cast<int>(values.measured.size()), median(values.measured), median(values.predicted),
                   median(values.cpu)});
  }
  return out;
}

// Rank 0's compute-stream tasks of the last step: summed wall time and thread CPU time (the rest of the step is
// spent between tasks or waiting), and that step's wall and process CPU time.
struct LastStepTasks {
  double wall_s = 0.0;
  double cpu_s = 0.0;
  double step_s = 0.0;
  double step_cpu_s = 0.0;
};

LastStepTasks last_step_tasks(const exec::RunResult& run) {
  LastStepTasks out;
  for (std::size_t idx = 0; idx < run.timeline.size(); ++idx) {
    const model::TimelineEvent& e = run.timeline[idx];
    if (e.rank == 0 && e.stream == model::Stream::Compute) {
      out.wall_s += e.end_s - e.start_s;
      out.cpu_s += idx < run.timeline_cpu_s.size() ? run.timeline_cpu_s[idx] : 0.0;
    }
  }
  out.step_s = run.step_time_s.empty() ? 0.0 : run.step_time_s.back();
  out.step_cpu_s = run.step_cpu_time_s.empty() ? 0.0 : run.step_cpu_time_s.back();
  return out;
}

double relative_error(double predicted, double measured) {
  return measured > 0.0 ? (predicted - measured) / measured : 0.0;
}

std::string cpu_title(const RunCliOptions& cli, const model::Scenario& scenario) {
  const model::Plan& plan = scenario.plan;
  return fmt::format("# cuboid run --backend cpu: model {}, tp={} pp={} dp={} vp={} ({} ranks), schedule {}, "
                     "micro-batch {}, global batch {}, fp32, seed {}\n",
                     scenario.model.name, plan.tp, plan.pp, plan.dp, plan.vp, plan.world_size(),
                     model::to_string(plan.schedule), plan.micro_batch_size, plan.global_batch_size, cli.seed);
}

// `title` is the first line(s); `cpu_time` prints the CPU-time line (CPU backend only).
void print_human(const RunCliOptions& cli, const std::string& title, const model::Plan& plan,
                 const exec::RunResult& run,
                 const model::CostProfile& profile, const sim::SimResult& predicted,
                 const std::vector<TaskError>& errors, int matched_tasks, int measured_tasks, bool cpu_time = true) {
  std::string out = title;
  const bool norms = run.grad_norms.size() == run.losses.size();
  out += norms ? "# step        loss   step time   grad norm\n" : "# step        loss   step time\n";
  out += norms ? "#    -           -        (ms)           -\n" : "#    -           -        (ms)\n";
  for (std::size_t step = 0; step < run.losses.size(); ++step) {
    out += fmt::format("{:6d}  {:10.6f}  {:10.3f}", step + 1, run.losses[step], run.step_time_s[step] * MS);
    out += norms ? fmt::format("  {:10.6f}\n", run.grad_norms[step]) : std::string("\n");
  }
  out += fmt::format("\nstep time: measured {:.3f} ms (median of steps {}..{}), predicted {:.3f} ms ({:+.1f} %)\n",
                     run.median_step_time_s * MS, run.losses.size() > 1 ? 2 : 1, run.losses.size(),
                     predicted.step_time_s * MS,
                     100.0 * relative_error(predicted.step_time_s, run.median_step_time_s));
  if (plan.cp > 1) { // --- context parallelism --- (docs/context_parallelism.md)
    out += plan.cp_comm_type == model::CpCommType::A2A
               ? "note: context parallelism runs, and is predicted, as --cp-comm-type a2a (DeepSpeed-Ulysses: Q/K/V "
                 "and output all-to-alls over the CP group, heads split over cp)\n"
               : "note: context parallelism runs, and is predicted, as --cp-comm-type allgather (K/V all-gathered per "
                 "layer, exposed: Transformer Engine's AttnFuncWithCPAndKVAllGather; p2p, the simulator's default, "
                 "is not executed)\n";
  }
  if (cpu_time) {
    out += fmt::format("rank 0 CPU time per step: {:.3f} ms = {:.0f} % of the wall time (below 100 %: the rank "
                       "waited or shared its core with other processes)\n",
                       run.median_step_cpu_time_s * MS,
                       100.0 * run.median_step_cpu_time_s / std::max(1e-12, run.median_step_time_s));
    const LastStepTasks last = last_step_tasks(run);
    out += fmt::format("last step on rank 0: {:.3f} ms wall, {:.3f} ms process CPU; its compute-stream tasks {:.3f} ms "
                       "wall, {:.3f} ms thread CPU\n",
                       last.step_s * MS, last.step_cpu_s * MS, last.wall_s * MS, last.cpu_s * MS);
  }
  out += fmt::format("profile: {} ({})\n", profile.name, profile.source);
  out += fmt::format("\n# tasks by kind (last step, every rank; {} of {} measured tasks matched by id): medians\n",
                     matched_tasks, measured_tasks);
  if (cpu_time) {
    out += "# kind                  tasks   measured  predicted    error   CPU time  error vs CPU\n";
    out += "# -                         -       (us)       (us)      (%)       (us)           (%)\n";
  } else {
    out += "# kind                  tasks   measured  predicted    error\n";
    out += "# -                         -       (us)       (us)      (%)\n";
  }
  for (const KindError& k : kind_errors(errors)) {
    out += fmt::format("{:<22} {:7d}  {:9.1f}  {:9.1f}  {:+7.1f}", k.kind, k.count, k.measured_s * US,
                       k.predicted_s * US, 100.0 * relative_error(k.predicted_s, k.measured_s));
    out += cpu_time ? fmt::format("  {:9.1f}  {:+12.1f}\n", k.cpu_s * US, 100.0 * relative_error(k.predicted_s, k.cpu_s))
                    : std::string("\n");
  }
  out += "\n# tasks with the largest prediction error\n";
  out += "#     id  rank  task                              measured  predicted      error\n";
  out += "#      -     -  -                                     (us)       (us)       (us)\n";
  const std::size_t shown = std::min(errors.size(), static_cast<std::size_t>(std::max(0, cli.top_tasks)));
  for (std::size_t idx = 0; idx < shown; ++idx) {
    const TaskError& e = errors[idx];
    out += fmt::format("{:8d}  {:4d}  {:<32}  {:9.1f}  {:9.1f}  {:+9.1f}\n", e.id, e.rank, e.label, e.measured_s * US,
                       e.predicted_s * US, (e.predicted_s - e.measured_s) * US);
  }
  if (!cli.trace_path.empty()) {
    out += fmt::format("\ntrace (measured and predicted) written to {} (open in https://ui.perfetto.dev)\n",
                       cli.trace_path);
  }
  std::fputs(out.c_str(), stdout);
}

nlohmann::json to_json(const model::Scenario& scenario, const exec::RunResult& run, const model::CostProfile& profile,
                       const sim::SimResult& predicted, const std::vector<TaskError>& errors, int top_tasks,
                       const std::string& backend = "cpu") {
  nlohmann::json out;
  out["backend"] = backend;
  out["ranks"] = scenario.plan.world_size();
  out["model"] = sim::analysis::model_to_json(scenario.model);
  out["plan"] = sim::analysis::plan_to_json(scenario.plan);
  out["steps"] = run.losses.size();
  out["losses"] = run.losses;
  if (!run.grad_norms.empty()) {
    out["grad_norms"] = run.grad_norms; // before clipping
  }
  out["step_times_s"] = run.step_time_s;
  out["step_time_s"] = run.median_step_time_s;
  out["step_cpu_times_s"] = run.step_cpu_time_s;
  out["step_cpu_time_s"] = run.median_step_cpu_time_s;
  out["predicted_step_time_s"] = predicted.step_time_s;
  out["prediction_error"] = relative_error(predicted.step_time_s, run.median_step_time_s);
  const LastStepTasks last = last_step_tasks(run);
  out["last_step_rank0"] = {{"step_s", last.step_s},
                            {"process_cpu_s", last.step_cpu_s},
                            {"compute_tasks_s", last.wall_s},
                            {"compute_tasks_cpu_s", last.cpu_s}};
  out["profile"] = {{"name", profile.name}, {"source", profile.source}};
  nlohmann::json tasks = nlohmann::json::array();
  for (std::size_t idx = 0; idx < std::min(errors.size(), static_cast<std::size_t>(std::max(0, top_tasks))); ++idx) {
    const TaskError& e = errors[idx];
    tasks.push_back({{"id", e.id},
                     {"rank", e.rank},
                     {"label", e.label},
                     {"measured_s", e.measured_s},
                     {"predicted_s", e.predicted_s}});
  }
  out["largest_task_errors"] = tasks;
  nlohmann::json kinds = nlohmann::json::array();
  for (const KindError& k : kind_errors(errors)) {
    kinds.push_back({{"kind", k.kind},
                     {"tasks", k.count},
                     {"median_measured_s", k.measured_s},
                     {"median_predicted_s", k.predicted_s},
                     {"median_cpu_s", k.cpu_s}});
  }
  out["task_kinds"] = kinds;
  return out;
}

int run_cpu(const RunCliOptions& cli) {
  int argc = 0;
  char** argv = nullptr;
  exec::CommEnvironment env(argc, argv);
  exec::Communicator& world = env.world();
  const bool root = world.rank() == 0;
  model::Scenario scenario;
  model::CostProfile profile;
  try {
    scenario = resolve_run_scenario(cli.scenario, world.size());
    // --- mixture of experts --- the combinations the CPU runtime executes, before any calibration runs
    exec::validate_moe_run(scenario.model, scenario.plan, exec::ProgramSource::TaskGraph);
    if (cli.scenario.cluster.profile) {
      profile = apply_profile_flags(cli.profile, model::load_profile(*cli.scenario.cluster.profile));
      if (profile.gpu != "cpu") {
        throw InputError(input_message(*cli.scenario.cluster.profile, "gpu",
                                       fmt::format("'{}': --backend cpu needs a CPU profile (gpu: cpu), written by "
                                                   "`cuboid calibrate --backend cpu --out FILE`",
                                                   profile.gpu)));
      }
    }
    check_run_flags(cli);
  } catch (const std::exception& error) {
    // Every rank finds the same error. Rank 0 reports it and the others wait for that before they exit: mpirun
    // aborts the job at the first non-zero exit status, which could kill rank 0 before its message was out.
    const int code = root ? report_error(error) : error_exit_code(error);
    world.barrier();
    return code;
  }

  exec::RunOptions options = run_options(cli, scenario);

  if (!cli.scenario.cluster.profile) {
    exec::CalibrationOptions calibration;
    calibration.peak_flops_per_s = model::CPU_REFERENCE_FLOPS_PER_S;
    calibration.mem_bw_bytes_per_s = model::CPU_REFERENCE_MEM_BW_BYTES_PER_S;
    calibration.link_bw_bytes_per_s = model::CPU_REFERENCE_LINK_BW_BYTES_PER_S;
    calibration.min_time_s = QUICK_CALIBRATION_MIN_TIME_S;
    calibration.allreduce_bytes = QUICK_ALLREDUCE_BYTES;
    calibration.name = "cpu-quick";
    // (a MoE model is calibrated on the dense model of the same shape: exec::calibrate)
    profile = exec::calibrate(options.model, options.plan, calibration, world).profile;
    profile.assumptions.emplace_back("quick calibration by cuboid run (no --profile): for a steadier prediction run "
                                     "`cuboid calibrate --backend cpu --out FILE` and pass --profile FILE");
    profile = apply_profile_flags(cli.profile, std::move(profile));
  }

  const exec::RunResult run = exec::run_training(options, world);
  if (!root) {
    return 0;
  }

  // Prediction of the same all-ranks TaskGraph (same task ids as the measured timeline).
  const model::TaskGraph graph =
      model::build_step_graph(scenario.model, scenario.cluster, scenario.plan, model::Instantiation::AllRanks);
  const model::CostModel cost(scenario.cluster, profile, scenario.plan);
  sim::SimOptions sim_options;
  sim_options.record_timeline = true;
  const sim::SimResult predicted = sim::simulate(graph, cost, sim_options);
  const std::vector<model::TimelineEvent> predicted_events = sim::to_timeline(graph, predicted);
  const std::vector<TaskError> errors = task_errors(run.timeline, predicted_events, run.timeline_cpu_s);
  if (!cli.trace_path.empty()) {
    model::write_chrome_trace(cli.trace_path, {model::TraceSet{"measured", run.timeline},
                                               model::TraceSet{"predicted", predicted_events}});
  }
  if (cli.json) {
    std::puts(to_json(scenario, run, profile, predicted, errors, cli.top_tasks).dump(2).c_str());
  } else {
    print_human(cli, cpu_title(cli, scenario), scenario.plan, run, profile, predicted, errors, static_cast<int>(errors.size()),
                static_cast<int>(run.timeline.size()));
  }
  return 0;
}

// --- CUDA backend (issue 9) ---
// One process per GPU (single process, torchrun or mpirun environment); the IR is built for the catalog GPU of
// --gpu (default h100-sxm) and the prediction uses --profile (e.g. a `cuboid calibrate --backend cuda` profile) or
// that GPU's shipped profile.
int run_cuda(const RunCliOptions& cli) {
  const int world_size = cuda_launch_world_size();
  ScenarioFlags flags = cli.scenario;
  if (flags.cluster.num_gpus && *flags.cluster.num_gpus != world_size) {
    throw InputError(input_message(WHERE, "--num-gpus",
                                   fmt::format("{} but this job has {} process(es) (WORLD_SIZE, 1 without a launcher); "
                                               "start it with `torchrun --nproc-per-node {} cuboid run ...` or drop "
                                               "--num-gpus",
                                               *flags.cluster.num_gpus, world_size, *flags.cluster.num_gpus)));
  }
  flags.cluster.num_gpus = world_size;
  if (!flags.cluster.gpu && !flags.cluster.system) {
    flags.cluster.gpu = "h100-sxm";
  }
  model::Scenario scenario = resolve_scenario(flags);
  use_run_cp_comm_type(scenario, flags);
  const model::CostProfile profile = resolve_profile(cli.profile, flags.cluster, scenario.cluster);
  check_run_flags(cli);
  exec::RunOptions options = run_options(cli, scenario);
  if (cli.attention_kernel != "auto" && cli.attention_kernel != "simple") {
    throw InputError(input_message(WHERE, "--attention-kernel",
                                   fmt::format("unknown value '{}' (valid: auto, simple)", cli.attention_kernel)));
  }
  options.cuda_tensor_core_attention = cli.attention_kernel == "auto";
  options.cuda_gemm_autotune = gemm_autotune_flag(cli.gemm_algo);
  const CudaTraining training = run_cuda_backend(options);
  if (!training.is_root) {
    return 0;
  }
  const exec::RunResult& run = training.run;
  const model::TaskGraph graph =
      model::build_step_graph(scenario.model, scenario.cluster, scenario.plan, model::Instantiation::AllRanks);
  const model::CostModel cost(scenario.cluster, profile, scenario.plan);
  sim::SimOptions sim_options;
  sim_options.record_timeline = true;
  const sim::SimResult predicted = sim::simulate(graph, cost, sim_options);
  const std::vector<model::TimelineEvent> predicted_events = sim::to_timeline(graph, predicted);
  const std::vector<TaskError> errors = task_errors(run.timeline, predicted_events);
  // Model FLOPs utilisation as the simulator defines it (model FLOPs per GPU-second / dense peak of the precision).
  const double peak = cost.peak_flops_per_s();
  const double measured_mfu = run.median_step_time_s > 0.0 && peak > 0.0
                                  ? graph.model_flops_per_step / run.median_step_time_s /
                                        static_cast<double>(scenario.plan.world_size()) / peak
                                  : 0.0;
  if (!cli.trace_path.empty()) {
    model::write_chrome_trace(cli.trace_path, {model::TraceSet{"measured", run.timeline},
                                               model::TraceSet{"predicted", predicted_events}});
  }
  const model::Plan& plan = scenario.plan;
  // The simulator's peak memory of each rank (sim/memory_timeline), to set beside the measured high-water mark of its
  // stream-ordered pool. NCCL allocates its buffers outside that pool, so the comparable prediction is the peak less
  // its CommBuffers share (model/memory_model.cpp: 32 MiB per communicator).
  struct RankBytes {
    double measured = 0.0, predicted = 0.0, nccl = 0.0;
    [[nodiscard]] double pool() const { return predicted - nccl; }
  };
  std::vector<RankBytes> memory(static_cast<std::size_t>(scenario.plan.world_size()));
  for (const sim::RankMemory& m : predicted.memory) {
    if (m.rank >= 0 && static_cast<std::size_t>(m.rank) < memory.size()) {
      memory[static_cast<std::size_t>(m.rank)].predicted = m.peak_bytes;
      memory[static_cast<std::size_t>(m.rank)].nccl = m.at_peak[static_cast<std::size_t>(model::MemTag::CommBuffers)];
    }
  }
  for (std::size_t rank = 0; rank < memory.size() && rank < training.peak_reserved_bytes_per_rank.size(); ++rank) {
    memory[rank].measured = training.peak_reserved_bytes_per_rank[rank];
  }
  const RankBytes rank0 = memory.empty() ? RankBytes{} : memory.front();
  // The rank whose measurement is farthest from its prediction (relative), for the one-line summary.
  std::size_t worst = 0;
  for (std::size_t rank = 0; rank < memory.size(); ++rank) {
    if (std::abs(relative_error(memory[rank].pool(), memory[rank].measured)) >
        std::abs(relative_error(memory[worst].pool(), memory[worst].measured))) {
      worst = rank;
    }
  }
  constexpr double GIB = 1024.0 * 1024.0 * 1024.0;
  if (cli.json) {
    nlohmann::json out = to_json(scenario, run, profile, predicted, errors, cli.top_tasks, "cuda");
    out["device"] = training.device;
    out["launcher"] = training.launcher;
    out["attention_kernel"] = training.attention_kernel;
    out["mfu"] = measured_mfu;
    out["predicted_mfu"] = predicted.mfu;
    out["model_flops_per_step"] = graph.model_flops_per_step;
    out["peak_flops_per_s"] = peak;
    out["peak_reserved_bytes_rank0"] = training.peak_reserved_bytes;
    out["predicted_peak_bytes_rank0"] = rank0.predicted; // with NCCL's buffers
    out["predicted_pool_bytes_rank0"] = rank0.pool();    // without them: compare with the pool
    nlohmann::json per_rank = nlohmann::json::array();
    for (std::size_t rank = 0; rank < memory.size(); ++rank) {
      per_rank.push_back({{"rank", rank},
                          {"measured_pool_bytes", memory[rank].measured},
                          {"predicted_pool_bytes", memory[rank].pool()},
                          {"predicted_nccl_bytes", memory[rank].nccl},
                          {"error", relative_error(memory[rank].pool(), memory[rank].measured)}});
    }
    out["memory_per_rank"] = per_rank;
    // The five longest measured tasks with their prediction (the op-by-op bar: within 15 %).
    std::vector<TaskError> longest = errors;
    std::stable_sort(longest.begin(), longest.end(),
                     [](const TaskError& a, const TaskError& b) { return a.measured_s > b.measured_s; });
    nlohmann::json largest = nlohmann::json::array();
    for (std::size_t idx = 0; idx < std::min<std::size_t>(5, longest.size()); ++idx) {
      const TaskError& e = longest[idx];
      largest.push_back({{"id", e.id},
                         {"rank", e.rank},
                         {"label", e.label},
                         {"measured_s", e.measured_s},
                         {"predicted_s", e.predicted_s},
                         {"error", relative_error(e.predicted_s, e.measured_s)}});
    }
    out["largest_measured_tasks"] = largest;
    std::puts(out.dump(2).c_str());
  } else {
    std::string title = fmt::format("# cuboid run --backend cuda: {} x{} ({}), model {}, tp={} cp={} pp={} dp={} "
                                    "vp={}, schedule {}, micro-batch {}, global batch {}, bf16 (fp32 master weights "
                                    "and grads), seed {}\n",
                                    training.device, training.world_size, training.launcher, scenario.model.name,
                                    plan.tp, plan.cp, plan.pp, plan.dp, plan.vp, model::to_string(plan.schedule),
                                    plan.micro_batch_size, plan.global_batch_size, cli.seed);
    print_human(cli, title, plan, run, profile, predicted, errors, static_cast<int>(errors.size()),
                static_cast<int>(run.timeline.size()), false);
    std::fputs(fmt::format("\nMFU: measured {:.1f} %, predicted {:.1f} % (model FLOPs {:.3e} per step, peak {:.0f} "
                           "TFLOP/s per GPU); device memory pool high-water mark on rank 0: {:.3f} GiB, predicted "
                           "{:.3f} GiB (and {:.3f} GiB of NCCL buffers outside the pool); attention: {}\n",
                           100.0 * measured_mfu, 100.0 * predicted.mfu, graph.model_flops_per_step, peak / 1e12,
                           rank0.measured / GIB, rank0.pool() / GIB, rank0.nccl / GIB, training.attention_kernel)
                   .c_str(),
               stdout);
    if (memory.size() > 1) {
      std::fputs(fmt::format("memory of the {} ranks: farthest from its prediction is rank {}, {:.3f} GiB measured, "
                             "{:.3f} GiB predicted ({:+.1f} %); per rank in --json (memory_per_rank)\n",
                             memory.size(), worst, memory[worst].measured / GIB, memory[worst].pool() / GIB,
                             100.0 * relative_error(memory[worst].pool(), memory[worst].measured))
                     .c_str(),
                 stdout);
    }
  }
  return 0;
}

int run_command(const RunCliOptions& cli) {
  if (cli.backend == "cuda") {
    return run_cuda(cli);
  }
  if (cli.backend != "cpu") {
    throw InputError(input_message(WHERE, "--backend", fmt::format("unknown value '{}' (valid: cpu, cuda)", cli.backend)));
  }
  require_default_gemm_algo(cli.gemm_algo);
  if (cli.attention_kernel != "auto") {
    throw InputError(input_message(WHERE, "--attention-kernel",
                                   fmt::format("'{}' is only used by --backend cuda (valid there: auto, simple; "
                                               "leave it out with --backend cpu)",
                                               cli.attention_kernel)));
  }
  return run_cpu(cli);
}
} // namespace

void add_run_command(CLI::App& app, Action& action) {
  auto options = std::make_shared<RunCliOptions>();
  options->scenario.model.model = "gpt-tiny";
  CLI::App* cmd = app.add_subcommand("run", "Train a plan for real (CPU: Eigen + MPI; mpirun -np N cuboid run ...) "
                                            "and compare with its prediction");
  cmd->add_option("--backend", options->backend, "cpu (Eigen + MPI) or cuda")->capture_default_str();
  add_scenario_flags(*cmd, options->scenario);
  add_profile_flags(*cmd, options->profile);
  cmd->add_option("--steps", options->steps, "Training steps")->capture_default_str();
  cmd->add_option("--seed", options->seed, "Seed of the initial weights and the synthetic token stream")
      ->capture_default_str();
  cmd->add_option("--data", options->data_file, "Token file (raw little-endian uint16) instead of synthetic tokens");
  cmd->add_option("--timeout", options->timeout_s,
                  "Seconds one step may take before the watchdog ends the whole job (0: off)")
      ->capture_default_str();
  cmd->add_option("--lr", options->lr, "AdamW learning rate (default: the runtime's)");
  cmd->add_option("--clip-grad", options->clip_grad,
                  "Clip gradients to this global L2 norm, as Megatron's --clip-grad (default 0: no clipping; "
                  "Megatron's default is 1.0)");
  cmd->add_flag("--json", options->json, "Print one JSON object (rank 0) instead of the tables");
  cmd->add_option("--trace", options->trace_path,
                  "Write the measured and the predicted timeline of the last step (Chrome/Perfetto JSON)");
  cmd->add_option("--top-tasks", options->top_tasks, "Tasks listed with the largest prediction error")
      ->capture_default_str();
  cmd->add_option("--attention-kernel", options->attention_kernel,
                  "--backend cuda: auto (tensor-core attention where the shape allows) or simple (scalar fp32 kernels)")
      ->capture_default_str();
  cmd->add_option("--gemm-algo", options->gemm_algo,
                  "--backend cuda: autotune (time cuBLASLt's top 8 algorithms once per GEMM shape, keep the fastest) "
                  "or heuristic (cuBLASLt's first)")
      ->capture_default_str();
  // Test-only fault injection (hidden): rank, 1-based step and kind (throw, nan, hang, crash).
  cmd->add_option("--inject-fault-rank", options->fault_rank)->group("");
  cmd->add_option("--inject-fault-step", options->fault_step)->group("");
  cmd->add_option("--inject-fault-kind", options->fault_kind)->group("");
  cmd->callback([options, &action] { action = [options] { return run_command(*options); }; });
}

} // namespace cuboid::tools
