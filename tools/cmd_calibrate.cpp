// `cuboid calibrate`: measures this machine's op costs on the CPU backend's own kernels (the GEMM shapes of the
// model's linear layers for each TP size, attention, elementwise ops, the per-op fixed cost and, under `mpirun -np
// N`, all-reduce by message size) and writes them as a cost profile that `cuboid run --profile FILE` and
// `cuboid simulate --profile FILE` read. The file is replaced atomically (model::save_profile).
#include "exec/calibration.hpp"
#include "exec/comm_environment.hpp"
#include "model/cpu_device.hpp"
#include "model/errors.hpp"
#include "tools/commands.hpp"
#include "tools/plan_options.hpp"
#include "tools/profile_options.hpp"
#include "tools/calibrate_cuda.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

namespace cuboid::tools {

namespace {
constexpr const char* WHERE = "command line";
constexpr int MAX_DEFAULT_TP = 8;
constexpr const char* DEFAULT_CUDA_GPU = "h100-sxm"; // GPU whose catalog peaks a --backend cuda profile is relative to
constexpr double GIGA = 1e9;
constexpr double US = 1e6;
constexpr int MAX_IN_SITU_STEPS = 1000;
constexpr std::int64_t MAX_SQUARE_GEMM = 65536; // M = N = K; 65536^2 bf16 operands are 8 GiB each

struct CalibrateOptions {
  ScenarioFlags scenario;
  std::string backend = "cpu";
  std::string out_path = "cpu-profile.yaml";
  std::vector<int> tp_sizes;
  double min_time_s = 0.02;
  std::vector<std::int64_t> square_gemm_sizes; // --backend cuda; empty: the default sweep
  std::string gemm_algo = "autotune";          // --backend cuda: autotune or heuristic, as `cuboid run --gemm-algo`
  bool json = false;
  // --- in-situ units (issue 5) ---
  int in_situ_steps = 8;
  int in_situ_microbatches = 4;
  std::string in_situ_clock = "cpu";
};

// TP sizes up to MAX_DEFAULT_TP that the model's heads, query groups, MLP and vocabulary divide by.
std::vector<int> default_tp_sizes(const model::ModelSpec& m) {
  std::vector<int> out;
  for (int tp = 1; tp <= MAX_DEFAULT_TP; tp *= 2) {
    if (m.num_attention_heads % tp == 0 && m.num_query_groups % tp == 0 && m.ffn_hidden_size % tp == 0 &&
        m.vocab_size % tp == 0) {
      out.push_back(tp);
    }
  }
  return out;
}

void print_human(const CalibrateOptions& cli, const model::Scenario& scenario, const exec::CalibrationResult& r,
                 int ranks) {
  std::string out;
  out += fmt::format("# cuboid calibrate --backend cpu: model {}, micro-batch {}, {} rank(s) measuring at once\n",
                     scenario.model.name, scenario.plan.micro_batch_size, ranks);
  for (const std::string& note : r.profile.assumptions) {
    if (note.starts_with("MoE model")) {
      out += "# " + note + "\n"; // exec::calibrate measured the dense model of the same shape
    }
  }
  out += "# GEMMs of the linear layers (Eigen, fp32, one thread per rank); backend = the CPU backend's linear op\n";
  out += "#  tp  gemm              M      N      K       time    Eigen  backend/Eigen\n";
  out += "#   -  -                 -      -      -       (us) (GFLOP/s)           (%)\n";
  for (const auto& g : r.gemms) {
    out += fmt::format("{:5d}  {:<14} {:6.0f} {:6.0f} {:6.0f} {:10.1f} {:8.2f}  {:13.1f}\n", g.tp, g.label, g.m, g.n,
                       g.k, g.time_s * US, g.flops_per_s / GIGA,
                       g.backend_time_s > 0.0 ? 100.0 * g.time_s / g.backend_time_s : 0.0);
  }
  out += fmt::format("Eigen square GEMM {}^3: {:.2f} GFLOP/s (this machine's Eigen peak, one thread)\n",
                     r.eigen_peak_size, r.eigen_peak_flops_per_s / GIGA);
  out += fmt::format("backend linear layers: {:.2f} GFLOP/s overall = {:.1f} % of Eigen on the same shapes, "
                     "{:.1f} % of the Eigen peak\n",
                     r.backend_linear_flops_per_s / GIGA,
                     100.0 * r.backend_linear_flops_per_s / std::max(1.0, r.eigen_linear_flops_per_s),
                     100.0 * r.backend_linear_flops_per_s / std::max(1.0, r.eigen_peak_flops_per_s));
  out += fmt::format("attention: forward {:.2f} GFLOP/s, backward {:.2f} GFLOP/s (causal FLOPs)\n",
                     r.attention_flops_per_s / GIGA, r.attention_bwd_flops_per_s / GIGA);
  // --- CPU prediction across models (branch cpux) ---
  out += "# CPU backend kernels (timed alone, every variant; the profile prices them per element)\n";
  for (const auto& k : r.kernels) {
    out += fmt::format("kernel {:<14} {:9.0f} elements {:9.1f} us {:8.3f} ns/element\n", k.name, k.elements,
                       k.time_s * US, k.s_per_element * 1e9);
  }
  out += "# units (one micro-batch on one TP shard; optimizer: one step) and the fit of their memory-bound ops\n";
  out += "#  tp  unit        measured  GEMM+attn      rest  IR ops   IR bytes  predicted\n";
  out += "#   -  -               (us)       (us)      (us)       -        (B)       (us)\n";
  for (const auto& u : r.units) {
    out += fmt::format("{:5d}  {:<10} {:9.1f} {:10.1f} {:9.1f} {:7.0f} {:10.0f} {:10.1f}\n", u.tp, u.name,
                       u.time_s * US, u.compute_s * US, (u.time_s - u.compute_s) * US, u.memory_ops, u.memory_bytes,
                       u.predicted_s * US);
  }
  if (r.in_situ_ranks > 0) {
    out += fmt::format("# tp-1 units measured in situ: mean task of {} training steps on {} rank(s) (data parallel, "
                       "1F1B), {}; alone = the unit timed on its own (best repeat)\n",
                       r.in_situ_steps_measured, r.in_situ_ranks,
                       cli.in_situ_clock == "cpu" ? "thread CPU time" : "wall time");
    out += "#  tp  unit         in situ     wall     alone  tasks  in situ/alone\n";
    out += "#   -  -               (us)     (us)      (us)      -            (%)\n";
    for (const auto& u : r.units) {
      if (u.in_situ) {
        out += fmt::format("{:5d}  {:<10} {:9.1f} {:8.1f} {:9.1f} {:6d} {:14.1f}\n", u.tp, u.name, u.time_s * US,
                           u.in_situ_wall_s * US, u.alone_s * US, u.in_situ_tasks,
                           100.0 * u.time_s / std::max(1e-12, u.alone_s));
      }
    }
    out += fmt::format("in-situ step (rank 0, wall): median {:.3f} ms, of which its compute-stream tasks {:.3f} ms "
                       "(the rest: between tasks, zero-grad, loss reduction, waits)\n",
                       r.in_situ_step_s * 1e3, r.in_situ_tasks_s * 1e3);
  }
  out += fmt::format("memory-bound ops: {:.3f} GB/s of IR bytes (fitted on embedding, head, optimizer); per-op cost "
                     "{:.3f} us (a 1x1 GEMM); the layers' rest is carried by the attention efficiencies\n",
                     r.elementwise_bytes_per_s / GIGA, r.launch_overhead_s * US);
  if (r.layer_fwd_floor_s > 0.0 || r.layer_bwd_floor_s > 0.0) {
    out += fmt::format("warning: layers measured faster than their parts timed alone (forward {:.1f} us, backward "
                       "{:.1f} us): predicted above measured by that much; calibrate on an idle machine or with a "
                       "longer --min-time\n",
                       r.layer_fwd_floor_s * US, r.layer_bwd_floor_s * US);
  }
  if (!r.allreduce.empty()) {
    out += fmt::format("# all-reduce over {} ranks (MPI)\n", ranks);
    out += "#       size        time      algbw      busbw\n";
    out += "#        (B)        (us)     (GB/s)     (GB/s)\n";
    for (const auto& c : r.allreduce) {
      out += fmt::format("{:12.0f} {:11.1f} {:10.3f} {:10.3f}\n", c.msg_bytes, c.time_s * US,
                         c.algbw_bytes_per_s / GIGA, c.busbw_bytes_per_s / GIGA);
    }
  } else {
    out += "all-reduce: not measured with one rank (run `mpirun -np 2 cuboid calibrate ...` to measure MPI)\n";
  }
  out += fmt::format("profile written to {}\n", cli.out_path);
  std::fputs(out.c_str(), stdout);
}

nlohmann::json to_json(const CalibrateOptions& cli, const exec::CalibrationResult& r, int ranks) {
  nlohmann::json gemms = nlohmann::json::array();
  for (const auto& g : r.gemms) {
    gemms.push_back({{"tp", g.tp},
                     {"label", g.label},
                     {"m", g.m},
                     {"n", g.n},
                     {"k", g.k},
                     {"time_s", g.time_s},
                     {"flops_per_s", g.flops_per_s},
                     {"backend_time_s", g.backend_time_s}});
  }
  nlohmann::json allreduce = nlohmann::json::array();
  for (const auto& c : r.allreduce) {
    allreduce.push_back({{"msg_bytes", c.msg_bytes},
                         {"time_s", c.time_s},
                         {"algbw_bytes_per_s", c.algbw_bytes_per_s},
                         {"busbw_bytes_per_s", c.busbw_bytes_per_s}});
  }
  nlohmann::json kernels = nlohmann::json::array();
  for (const auto& k : r.kernels) {
    kernels.push_back(
        {{"name", k.name}, {"elements", k.elements}, {"time_s", k.time_s}, {"s_per_element", k.s_per_element}});
  }
  nlohmann::json units = nlohmann::json::array();
  for (const auto& u : r.units) {
    units.push_back({{"tp", u.tp},
                     {"name", u.name},
                     {"time_s", u.time_s},
                     {"compute_s", u.compute_s},
                     {"kernel_s", u.kernel_s},
                     {"memory_ops", u.memory_ops},
                     {"memory_bytes", u.memory_bytes},
                     {"predicted_s", u.predicted_s},
                     {"in_situ", u.in_situ},
                     {"alone_s", u.alone_s},
                     {"in_situ_wall_s", u.in_situ_wall_s},
                     {"in_situ_tasks", u.in_situ_tasks}});
  }
  return {{"backend", "cpu"},
          {"ranks", ranks},
          {"profile_path", cli.out_path},
          {"gemms", gemms},
          {"eigen_peak_size", r.eigen_peak_size},
          {"eigen_peak_flops_per_s", r.eigen_peak_flops_per_s},
          {"eigen_linear_flops_per_s", r.eigen_linear_flops_per_s},
          {"backend_linear_flops_per_s", r.backend_linear_flops_per_s},
          {"attention_flops_per_s", r.attention_flops_per_s},
          {"attention_bwd_flops_per_s", r.attention_bwd_flops_per_s},
          {"elementwise_bytes_per_s", r.elementwise_bytes_per_s},
          {"launch_overhead_s", r.launch_overhead_s},
          {"tiny_op_s", r.tiny_op_s},
          {"layer_fwd_floor_s", r.layer_fwd_floor_s},
          {"layer_bwd_floor_s", r.layer_bwd_floor_s},
          {"allreduce", allreduce},
          {"units", units},
          {"kernels", kernels},
          {"in_situ", {{"ranks", r.in_situ_ranks},
                       {"steps", r.in_situ_steps_measured},
                       {"clock", cli.in_situ_clock},
                       {"step_s", r.in_situ_step_s},
                       {"compute_tasks_s", r.in_situ_tasks_s}}}};
}

// --out and --min-time, shared by both backends.
void check_output_flags(const CalibrateOptions& cli) {
  if (cli.out_path.empty()) {
    throw InputError(input_message(WHERE, "--out", "empty path (expected the profile file to write)"));
  }
  if (!std::isfinite(cli.min_time_s) || cli.min_time_s <= 0.0 || cli.min_time_s > 10.0) {
    throw InputError(input_message(WHERE, "--min-time", fmt::format("{} (expected seconds in (0, 10])", cli.min_time_s)));
  }
}

// GPU: one process per GPU (single process, torchrun or mpirun); the catalog GPU (--gpu, default h100-sxm) gives
// the peaks the measured rates are divided by.
int run_calibrate_cuda(const CalibrateOptions& cli) {
  check_output_flags(cli);
  const model::Scenario scenario = resolve_scenario(cli.scenario); // shapes only: tp and micro-batch size
  const std::string gpu = cli.scenario.cluster.gpu.value_or(DEFAULT_CUDA_GPU);
  for (const std::int64_t size : cli.square_gemm_sizes) {
    if (size < 1 || size > MAX_SQUARE_GEMM) {
      throw InputError(input_message(WHERE, "--square-gemm-sizes",
                                     fmt::format("{} (expected M = N = K in 1..{})", size, MAX_SQUARE_GEMM)));
    }
  }
  const CudaCalibration result = calibrate_cuda_backend(scenario.model, scenario.plan, gpu, cli.min_time_s,
                                                        cli.square_gemm_sizes, gemm_autotune_flag(cli.gemm_algo));
  if (!result.is_root) {
    return 0;
  }
  model::save_profile(result.profile, cli.out_path);
  std::fputs(result.summary.c_str(), stdout);
  std::fputs(fmt::format("profile written to {}\n", cli.out_path).c_str(), stdout);
  return 0;
}

int run_calibrate(const CalibrateOptions& cli) {
  if (cli.backend == "cuda") {
    return run_calibrate_cuda(cli);
  }
  if (cli.backend != "cpu") {
    throw InputError(input_message(WHERE, "--backend", fmt::format("unknown value '{}' (valid: cpu, cuda)", cli.backend)));
  }
  if (!cli.square_gemm_sizes.empty()) {
    throw InputError(input_message(WHERE, "--square-gemm-sizes",
                                   "only used by --backend cuda (the CPU calibration sweeps the model's own shapes)"));
  }
  require_default_gemm_algo(cli.gemm_algo);
  int argc = 0;
  char** argv = nullptr;
  exec::CommEnvironment env(argc, argv);
  exec::Communicator& world = env.world();
  const bool root = world.rank() == 0;
  model::Scenario scenario;
  exec::CalibrationOptions options;
  try {
    if (cli.scenario.cluster.gpu || cli.scenario.cluster.system || cli.scenario.cluster.num_gpus ||
        cli.scenario.cluster.gpus_per_node || cli.scenario.cluster.profile) {
      throw InputError(input_message(WHERE, "--gpu/--system/--num-gpus/--gpus-per-node/--profile",
                                     "not used by calibrate --backend cpu (it measures this machine; the number of "
                                     "ranks is the MPI world size)"));
    }
    check_output_flags(cli);
    // --- in-situ units (issue 5) ---
    if (cli.in_situ_steps < 0 || cli.in_situ_steps > MAX_IN_SITU_STEPS) {
      throw InputError(input_message(WHERE, "--in-situ-steps",
                                     fmt::format("{} (expected an integer in [0, {}]; 0 times every unit alone)",
                                                 cli.in_situ_steps, MAX_IN_SITU_STEPS)));
    }
    if (cli.in_situ_microbatches < 1 || cli.in_situ_microbatches > MAX_IN_SITU_STEPS) {
      throw InputError(input_message(WHERE, "--in-situ-microbatches",
                                     fmt::format("{} (expected an integer in [1, {}])", cli.in_situ_microbatches,
                                                 MAX_IN_SITU_STEPS)));
    }
    if (cli.in_situ_clock != "cpu" && cli.in_situ_clock != "wall") {
      throw InputError(input_message(WHERE, "--in-situ-clock",
                                     fmt::format("unknown value '{}' (valid: cpu, wall)", cli.in_situ_clock)));
    }
    scenario = resolve_scenario(cli.scenario); // shapes only: tp and micro-batch size of the plan
    options.tp_sizes = cli.tp_sizes.empty() ? default_tp_sizes(scenario.model) : cli.tp_sizes;
    for (const int tp : options.tp_sizes) {
      const model::ModelSpec& m = scenario.model;
      if (tp < 1 || m.num_attention_heads % tp != 0 || m.num_query_groups % tp != 0 || m.ffn_hidden_size % tp != 0 ||
          m.vocab_size % tp != 0) {
        throw InputError(input_message(WHERE, "--tp-sizes",
                                       fmt::format("{}: expected a size >= 1 dividing num_attention_heads = {}, "
                                                   "num_query_groups = {}, ffn_hidden_size = {} and vocab_size = {}",
                                                   tp, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size,
                                                   m.vocab_size)));
      }
    }
  } catch (const std::exception& error) {
    // Every rank finds the same error. Rank 0 reports it and the others wait for that before they exit: mpirun
    // aborts the job at the first non-zero exit status, which could kill rank 0 before its message was out.
    const int code = root ? report_error(error) : error_exit_code(error);
    world.barrier();
    return code;
  }
  options.peak_flops_per_s = model::CPU_REFERENCE_FLOPS_PER_S;
  options.mem_bw_bytes_per_s = model::CPU_REFERENCE_MEM_BW_BYTES_PER_S;
  options.link_bw_bytes_per_s = model::CPU_REFERENCE_LINK_BW_BYTES_PER_S;
  options.min_time_s = cli.min_time_s;
  options.name = "cpu-measured";
  options.in_situ_steps = cli.in_situ_steps;
  options.in_situ_microbatches = cli.in_situ_microbatches;
  options.in_situ_cpu_time = cli.in_situ_clock == "cpu";
  const exec::CalibrationResult result = exec::calibrate(scenario.model, scenario.plan, options, world);
  if (!root) {
    return 0;
  }
  model::save_profile(result.profile, cli.out_path);
  if (cli.json) {
    std::puts(to_json(cli, result, world.size()).dump(2).c_str());
  } else {
    print_human(cli, scenario, result, world.size());
  }
  return 0;
}
} // namespace

void add_calibrate_command(CLI::App& app, Action& action) {
  auto options = std::make_shared<CalibrateOptions>();
  options->scenario.model.model = "gpt-tiny";
  CLI::App* cmd = app.add_subcommand("calibrate", "Measure this machine's op costs and write a cost profile "
                                                  "(mpirun -np N cuboid calibrate ... also measures MPI all-reduce)");
  cmd->add_option("--backend", options->backend, "cpu (Eigen + MPI) or cuda")->capture_default_str();
  add_model_flags(*cmd, options->scenario.model);
  add_cluster_flags(*cmd, options->scenario.cluster);
  add_plan_flags(*cmd, options->scenario.plan);
  cmd->add_option("--out", options->out_path, "Profile file to write (replaced atomically)")->capture_default_str();
  cmd->add_option("--tp-sizes", options->tp_sizes,
                  "TP sizes whose per-rank shapes are measured (default: 1, 2, 4, 8 where the model divides)")
      ->delimiter(',');
  cmd->add_option("--min-time", options->min_time_s, "Seconds each measurement repeats for (best repeat counts)")
      ->capture_default_str();
  cmd->add_option("--square-gemm-sizes", options->square_gemm_sizes,
                  "--backend cuda: M = N = K of the square GEMM sweep (default 512,1024,2048,4096,8192)")
      ->delimiter(',');
  cmd->add_option("--gemm-algo", options->gemm_algo,
                  "--backend cuda: autotune or heuristic, how the GEMMs pick their cuBLASLt algorithm (use the value "
                  "`cuboid run --gemm-algo` will use)")
      ->capture_default_str();
  cmd->add_flag("--json", options->json, "Print the measurements as one JSON object");
  // --- in-situ units (issue 5) ---
  cmd->add_option("--in-situ-steps", options->in_situ_steps,
                  "--backend cpu: time the tp-1 units inside this many real training steps (mean task; 0: each "
                  "unit alone, best repeat)")
      ->capture_default_str();
  cmd->add_option("--in-situ-microbatches", options->in_situ_microbatches,
                  "--backend cpu: micro-batches per rank and step of the in-situ training")
      ->capture_default_str();
  cmd->add_option("--in-situ-clock", options->in_situ_clock,
                  "--backend cpu: cpu (each task's thread CPU time) or wall (its wall time)")
      ->capture_default_str();
  cmd->callback([options, &action] { action = [options] { return run_calibrate(*options); }; });
}

} // namespace cuboid::tools
