// build_report(): one layout search per GPU type over the requested GPU counts, then the economics of each best plan
// (time, GPU-hours, dollars, energy, goodput under failures), a straggler re-simulation, a +/-20% sensitivity study
// and the recommended plan's step timeline and per-stage memory for the charts.
#include "sim/analysis/report.hpp"

#include "model/cost_model.hpp"
#include "model/errors.hpp"
#include "model/step_builder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

namespace cuboid::sim::analysis {

namespace {
constexpr double SECONDS_PER_HOUR = 3600.0;
constexpr double SECONDS_PER_DAY = 86400.0;
constexpr double WATTS_PER_KW = 1000.0;
constexpr double TOKENS_PER_MILLION = 1e6;
// Blocks of one category closer than this fraction of the step are drawn as one (about a pixel of the chart).
constexpr double TIMELINE_MERGE_FRACTION = 1e-3;

void require(bool ok, const char* flag, const std::string& message) {
  if (!ok) {
    throw InputError(input_message("command line", flag, message));
  }
}

void validate_inputs(const ReportInputs& inputs) {
  require(!inputs.gpus.empty(), "--gpu", "needs at least one GPU type");
  require(!inputs.num_gpus.empty(), "--num-gpus", "needs at least one GPU count");
  for (const int count : inputs.num_gpus) {
    require(count > 0, "--num-gpus", fmt::format("{} must be positive", count));
  }
  if (inputs.goal == ReportGoal::Tokens) {
    require(std::isfinite(inputs.tokens) && inputs.tokens > 0.0, "--tokens",
            fmt::format("{} must be a positive number of tokens, e.g. 300e9", inputs.tokens));
  } else {
    require(std::isfinite(inputs.days) && inputs.days > 0.0, "--days",
            fmt::format("{} must be a positive number of days", inputs.days));
  }
  require(std::isfinite(inputs.pue) && inputs.pue >= 1.0, "--pue",
          fmt::format("{} must be >= 1 (facility power / IT power)", inputs.pue));
  require(std::isfinite(inputs.server_overhead) && inputs.server_overhead >= 1.0, "--server-overhead",
          fmt::format("{} must be >= 1 (server power / GPU power)", inputs.server_overhead));
  require(inputs.straggler_slowdown == 0.0 ||
              (std::isfinite(inputs.straggler_slowdown) && inputs.straggler_slowdown >= 1.0),
          "--straggler-slowdown", fmt::format("{} must be >= 1 (1.2 = 20% slower)", inputs.straggler_slowdown));
  require(inputs.sensitivity_fraction > 0.0 && inputs.sensitivity_fraction < 1.0, "--sensitivity",
          fmt::format("{} must be in (0, 1)", inputs.sensitivity_fraction));
  require(inputs.cost_tolerance >= 0.0 && std::isfinite(inputs.cost_tolerance), "--cost-tolerance",
          fmt::format("{} must be >= 0", inputs.cost_tolerance));
  for (const auto& gpu : inputs.gpus) {
    require(gpu.price.usd_per_gpu_hour > 0.0 && std::isfinite(gpu.price.usd_per_gpu_hour), "--price-per-gpu-hour",
            fmt::format("{}={} must be a positive price in USD per GPU-hour", gpu.cluster.gpu.name,
                        gpu.price.usd_per_gpu_hour));
    require(gpu.power.watts > 0.0 && std::isfinite(gpu.power.watts), "--gpu",
            fmt::format("{} has no board power (power_w)", gpu.cluster.gpu.name));
  }
  (void)compute_goodput(inputs.failures, 1); // validates the failure assumptions, naming the flag
}

Projection project(const ReportInputs& inputs, const ReportGpu& gpu, int num_gpus, double tokens_per_s,
                   double goodput_fraction, double usd_per_gpu_hour) {
  Projection out;
  const double effective_tokens_per_s = tokens_per_s * goodput_fraction;
  if (inputs.goal == ReportGoal::Tokens) {
    out.tokens = inputs.tokens;
    out.time_s = inputs.tokens / effective_tokens_per_s;
  } else {
    out.time_s = inputs.days * SECONDS_PER_DAY;
    out.tokens = effective_tokens_per_s * out.time_s;
  }
  const double gpus = static_cast<double>(num_gpus);
  out.gpu_hours = gpus * out.time_s / SECONDS_PER_HOUR;
  out.cost_usd = out.gpu_hours * usd_per_gpu_hour;
  // Every GPU is charged at board power for the whole wall time, restarts included (an upper bound on draw).
  out.energy_kwh = out.gpu_hours * gpu.power.watts * inputs.server_overhead * inputs.pue / WATTS_PER_KW;
  return out;
}

model::ClusterSpec sized(const model::ClusterSpec& cluster, int num_gpus) {
  model::ClusterSpec out = cluster;
  out.num_gpus = num_gpus;
  return out;
}

// All GEMM efficiencies times `factor` (the analytic curve's maxima and any measured table), capped at 1.
model::CostProfile scale_gemm(model::CostProfile profile, double factor) {
  profile.gemm_max_efficiency = std::min(1.0, profile.gemm_max_efficiency * factor);
  profile.gemm_fp8_max_efficiency = std::min(1.0, profile.gemm_fp8_max_efficiency * factor);
  for (auto& point : profile.gemm_table) {
    point.efficiency = std::min(1.0, point.efficiency * factor);
  }
  return profile;
}

// A GPU that runs every kernel `slowdown` times slower (thermal throttling, a bad HBM stack, a noisy neighbour):
// all compute and memory efficiencies divided by it, launch overhead multiplied; its links run at full speed.
model::CostProfile slowed_profile(model::CostProfile profile, double slowdown) {
  profile = scale_gemm(std::move(profile), 1.0 / slowdown);
  profile.attention_efficiency /= slowdown;
  profile.attention_bwd_efficiency /= slowdown;
  profile.hbm_efficiency /= slowdown;
  profile.launch_overhead_s *= slowdown;
  return profile;
}

SimResult simulate_plan(const model::TaskGraph& graph, const model::ClusterSpec& cluster,
                        const model::CostProfile& profile, bool record_timeline) {
  const model::CostModel cost(cluster, profile, graph.get_plan());
  SimOptions options;
  options.record_timeline = record_timeline;
  options.record_memory_timeline = false;
  return simulate(graph, cost, options);
}

std::string infeasible_reason(const SearchResult& search, int num_gpus) {
  std::map<std::string, std::size_t> counts;
  std::string example;
  std::size_t total = 0;
  for (const auto& outcome : search.plans) {
    if (outcome.num_gpus != num_gpus) {
      continue;
    }
    ++total;
    ++counts[to_string(outcome.status)];
    if (example.empty() && outcome.status == PlanStatus::OutOfMemory) {
      example = outcome.reason;
    }
  }
  if (total == 0) {
    return fmt::format("no plan in the search space for {} GPUs (check that the global batch divides over DP and "
                       "that TP/PP divide the GPU count)",
                       num_gpus);
  }
  std::string out = fmt::format("{} plans:", total);
  const char* separator = " ";
  for (const auto& [status, count] : counts) {
    out += fmt::format("{}{} {}", separator, count, status);
    separator = ", ";
  }
  if (!example.empty()) {
    out += fmt::format("; e.g. {}", example);
  }
  return out;
}

std::optional<std::size_t> best_of_count(const SearchResult& search, int num_gpus) {
  std::optional<std::size_t> best;
  for (std::size_t idx = 0; idx < search.plans.size(); ++idx) {
    const auto& outcome = search.plans[idx];
    if (outcome.num_gpus == num_gpus && outcome.status == PlanStatus::Simulated &&
        (!best || outcome.result->step_time_s < search.plans[*best].result->step_time_s)) {
      best = idx;
    }
  }
  return best;
}

void choose_recommended(Report& report) {
  const ReportInputs& inputs = report.inputs;
  double cheapest = std::numeric_limits<double>::infinity();
  for (const auto& option : report.options) {
    if (option.feasible) {
      cheapest = std::min(cheapest, option.usd_per_million_tokens);
    }
  }
  const double cost_limit = inputs.objective == ReportObjective::Time    ? std::numeric_limits<double>::infinity()
                            : inputs.objective == ReportObjective::Cost ? cheapest
                                                                        : cheapest * (1.0 + inputs.cost_tolerance);
  double best_rate = -1.0;
  for (std::size_t idx = 0; idx < report.options.size(); ++idx) {
    const auto& option = report.options[idx];
    const double effective_rate = option.result.tokens_per_s * option.goodput.goodput_fraction;
    if (option.feasible && option.usd_per_million_tokens <= cost_limit && effective_rate > best_rate) {
      best_rate = effective_rate;
      report.recommended = idx;
    }
  }
  switch (inputs.objective) {
  case ReportObjective::Cost:
    report.recommendation_rule = "cheapest per token, failures included (--objective cost)";
    break;
  case ReportObjective::Time:
    report.recommendation_rule = "highest throughput after failures, whatever the cost (--objective time)";
    break;
  case ReportObjective::Balanced:
    report.recommendation_rule =
        fmt::format("fastest option (throughput after failures) whose cost per token is within {:.0f}% of the "
                    "cheapest (--objective balanced, --cost-tolerance {})",
                    100.0 * inputs.cost_tolerance, inputs.cost_tolerance);
    break;
  }
}

std::string lane_category(const model::Task& task, TimelineLane& lane) {
  lane = TimelineLane::Comm;
  switch (task.kind) {
  case model::TaskKind::Compute:
    lane = TimelineLane::Compute;
    // zero-bubble weight-gradient (W) tasks are the deferred half of the backward
    return task.phase == model::Phase::Backward || task.phase == model::Phase::WeightGrad ? "backward" : "forward";
  case model::TaskKind::Optimizer:
    lane = TimelineLane::Compute;
    return "optimizer";
  case model::TaskKind::P2P:
    return "pp-comm";
  case model::TaskKind::Collective:
    // gradient synchronisation (DP, expert-DP, the tied embedding's group) vs tensor-parallel traffic
    switch (task.group) {
    case model::GroupKind::Dp:
    case model::GroupKind::ExpertDp:
    case model::GroupKind::Embedding:
      return "dp-comm";
    case model::GroupKind::Tp:
      return "tp-comm";
    case model::GroupKind::Pp:
      return "pp-comm";
    }
    return "pp-comm";
  }
  return "other";
}

// One row per pipeline stage (its first materialised rank), blocks of one category merged across tiny gaps so the
// chart stays readable (and small) with hundreds of micro-batches.
std::vector<TimelineBlock> coalesce_timeline(const model::TaskGraph& graph, const SimResult& result) {
  std::map<int, int> stage_rank;
  for (const auto& info : graph.ranks()) {
    stage_rank.emplace(info.stage, info.rank);
  }
  std::vector<TimelineBlock> blocks;
  for (const auto& timing : result.timeline) {
    const model::Task& task = graph.task(timing.id);
    const auto found = stage_rank.find(task.stage);
    if (found == stage_rank.end() || found->second != task.rank || timing.end_s <= timing.start_s) {
      continue;
    }
    TimelineBlock block;
    block.stage = task.stage;
    block.category = lane_category(task, block.lane);
    block.start_s = timing.start_s;
    block.end_s = timing.end_s;
    blocks.push_back(std::move(block));
  }
  std::sort(blocks.begin(), blocks.end(), [](const TimelineBlock& a, const TimelineBlock& b) {
    if (a.stage != b.stage) {
      return a.stage < b.stage;
    }
    if (a.lane != b.lane) {
      return a.lane < b.lane;
    }
    return a.start_s < b.start_s;
  });
  const double merge_gap_s = result.step_time_s * TIMELINE_MERGE_FRACTION;
  std::vector<TimelineBlock> merged;
  for (auto& block : blocks) {
    if (!merged.empty()) {
      TimelineBlock& last = merged.back();
      if (last.stage == block.stage && last.lane == block.lane && last.category == block.category &&
          block.start_s - last.end_s <= merge_gap_s) {
        last.end_s = std::max(last.end_s, block.end_s);
        continue;
      }
    }
    merged.push_back(std::move(block));
  }
  return merged;
}

std::vector<StageMemory> stage_memory(const model::TaskGraph& graph, const SimResult& result) {
  std::map<int, StageMemory> by_stage;
  for (const auto& rank_memory : result.memory) {
    const int idx = graph.rank_index(rank_memory.rank);
    if (idx < 0) {
      continue;
    }
    const int stage = graph.ranks()[static_cast<std::size_t>(idx)].stage;
    StageMemory& entry = by_stage[stage];
    entry.stage = stage;
    if (rank_memory.peak_bytes >= entry.peak_bytes) {
      entry.peak_bytes = rank_memory.peak_bytes;
      entry.at_peak = rank_memory.at_peak;
    }
  }
  std::vector<StageMemory> out;
  for (const auto& [stage, entry] : by_stage) {
    out.push_back(entry);
  }
  return out;
}

ReportOption make_option(const ReportInputs& inputs, const ReportGpu& gpu, int num_gpus, const SearchResult& search) {
  ReportOption option;
  option.gpu = gpu.cluster.gpu.name;
  option.num_gpus = num_gpus;
  option.price = gpu.price;
  option.power_w_per_gpu = gpu.power.watts;
  option.goodput = compute_goodput(inputs.failures, num_gpus);
  for (const auto& outcome : search.plans) {
    if (outcome.num_gpus == num_gpus) {
      ++option.plans_in_space;
      option.plans_simulated += outcome.result ? 1U : 0U;
    }
  }
  const auto best = best_of_count(search, num_gpus);
  if (!best) {
    option.reason = infeasible_reason(search, num_gpus);
    return option;
  }
  option.feasible = true;
  option.plan = search.plans[*best].plan;
  option.result = *search.plans[*best].result;
  const double price = gpu.price.usd_per_gpu_hour;
  option.ideal = project(inputs, gpu, num_gpus, option.result.tokens_per_s, 1.0, price);
  option.with_failures =
      project(inputs, gpu, num_gpus, option.result.tokens_per_s, option.goodput.goodput_fraction, price);
  option.usd_per_million_tokens = option.with_failures.cost_usd / option.with_failures.tokens * TOKENS_PER_MILLION;
  return option;
}

void add_straggler(const ReportInputs& inputs, const ReportGpu& gpu, ReportOption& option) {
  const model::ClusterSpec cluster = sized(gpu.cluster, option.num_gpus);
  const model::TaskGraph graph =
      model::build_step_graph(inputs.model, cluster, option.plan, model::Instantiation::RankClasses);
  const SimResult slow = simulate_plan(graph, cluster, slowed_profile(gpu.profile, inputs.straggler_slowdown), false);
  StragglerImpact impact;
  impact.slowdown = inputs.straggler_slowdown;
  impact.step_time_s = slow.step_time_s;
  impact.tokens_per_s = slow.tokens_per_s;
  impact.job_slowdown = slow.step_time_s / option.result.step_time_s;
  impact.with_failures = project(inputs, gpu, option.num_gpus, slow.tokens_per_s, option.goodput.goodput_fraction,
                                 gpu.price.usd_per_gpu_hour);
  option.straggler = impact;
}

void add_sensitivity(Report& report, const ReportGpu& gpu, const ReportOption& option,
                     const model::TaskGraph& graph) {
  const ReportInputs& inputs = report.inputs;
  const double f = inputs.sensitivity_fraction;
  const model::ClusterSpec cluster = sized(gpu.cluster, option.num_gpus);
  const double price = gpu.price.usd_per_gpu_hour;
  const auto with_profile = [&](const model::CostProfile& profile) {
    const SimResult result = simulate_plan(graph, cluster, profile, false);
    return project(inputs, gpu, option.num_gpus, result.tokens_per_s, option.goodput.goodput_fraction, price);
  };
  const auto clamp_note = [](double value) {
    return value > 1.0 ? std::string("high value capped at 1.0 (100% of peak)") : std::string{};
  };
  {
    SensitivityRow row{"GEMM efficiency", gpu.profile.gemm_max_efficiency, gpu.profile.gemm_max_efficiency * (1.0 - f),
                       std::min(1.0, gpu.profile.gemm_max_efficiency * (1.0 + f)), "", {}, {},
                       clamp_note(gpu.profile.gemm_max_efficiency * (1.0 + f))};
    row.low = with_profile(scale_gemm(gpu.profile, 1.0 - f));
    row.high = with_profile(scale_gemm(gpu.profile, 1.0 + f));
    report.sensitivity.push_back(std::move(row));
  }
  {
    SensitivityRow row{"NIC bandwidth efficiency", gpu.profile.nic_efficiency, gpu.profile.nic_efficiency * (1.0 - f),
                       std::min(1.0, gpu.profile.nic_efficiency * (1.0 + f)), "", {}, {},
                       clamp_note(gpu.profile.nic_efficiency * (1.0 + f))};
    model::CostProfile profile = gpu.profile;
    profile.nic_efficiency = row.low_value;
    row.low = with_profile(profile);
    profile.nic_efficiency = row.high_value;
    row.high = with_profile(profile);
    report.sensitivity.push_back(std::move(row));
  }
  {
    const double mtbf = inputs.failures.mtbf_gpu_hours;
    SensitivityRow row{"MTBF per GPU", mtbf, mtbf * (1.0 - f), mtbf * (1.0 + f), "h", {}, {}, ""};
    for (const auto& [value, target] : {std::pair{row.low_value, &row.low}, std::pair{row.high_value, &row.high}}) {
      FailureAssumptions failures = inputs.failures;
      failures.mtbf_gpu_hours = value;
      *target = project(inputs, gpu, option.num_gpus, option.result.tokens_per_s,
                        compute_goodput(failures, option.num_gpus).goodput_fraction, price);
    }
    report.sensitivity.push_back(std::move(row));
  }
  {
    SensitivityRow row{"GPU-hour price", price, price * (1.0 - f), price * (1.0 + f), "USD/GPU-h", {}, {}, ""};
    row.low = project(inputs, gpu, option.num_gpus, option.result.tokens_per_s, option.goodput.goodput_fraction,
                      row.low_value);
    row.high = project(inputs, gpu, option.num_gpus, option.result.tokens_per_s, option.goodput.goodput_fraction,
                       row.high_value);
    report.sensitivity.push_back(std::move(row));
  }
}

void add_assumptions(Report& report) {
  const ReportInputs& inputs = report.inputs;
  auto& out = report.assumptions;
  for (const auto& gpu : inputs.gpus) {
    const GpuPrice& price = gpu.price;
    out.push_back(price.user_override
                      ? fmt::format("price {}: {} USD per GPU-hour (--price-per-gpu-hour)", price.gpu,
                                    price.usd_per_gpu_hour)
                      : fmt::format("price {}: {} USD per GPU-hour, {} {} {} {}, as of {} ({})", price.gpu,
                                    price.usd_per_gpu_hour, price.provider, price.instance, price.region,
                                    price.pricing, price.as_of, price.source));
    out.push_back(fmt::format("power {}: {} W per GPU board ({})", gpu.cluster.gpu.name, gpu.power.watts,
                              gpu.power.source));
    out.push_back(fmt::format("cost profile {}: {}", gpu.profile.name, gpu.profile.source));
  }
  out.push_back(fmt::format("energy = GPUs x board power x server overhead {} x PUE {} x wall time; every GPU drawn at "
                            "board power for the whole run, restarts included (an upper bound)",
                            inputs.server_overhead, inputs.pue));
  out.push_back(fmt::format("failures: per-GPU MTBF {} h (Llama 3, Dubey et al. 2024 sec. 3.3.4: 419 unexpected "
                            "interruptions in 54 days on 16,384 H100s = 50,676 h); job MTBF M = per-GPU MTBF / GPUs",
                            inputs.failures.mtbf_gpu_hours));
  out.push_back(fmt::format("checkpoint write delta = {:.0f} s, restart R = {:.0f} s (assumptions; --checkpoint-write-s, "
                            "--restart-s)",
                            inputs.failures.checkpoint_write_s, inputs.failures.restart_s));
  out.push_back("checkpoint interval tau = sqrt(2 delta M) - delta (Daly 2006 first order; Young 1974: sqrt(2 delta "
                "M))");
  out.push_back("wall time with failures T_wall = M e^(R/M) (e^((tau+delta)/M) - 1) T_solve / tau (Daly 2006, "
                "exponential failures); goodput = T_solve / T_wall");
  if (inputs.straggler_slowdown > 0.0) {
    out.push_back(fmt::format(
        "straggler: one GPU {}x slower is modelled by re-simulating the best plan with every compute efficiency / {} "
        "(a synchronous job runs at the pace of its slowest rank: its stage is on every step's critical path); "
        "communication keeps its speed",
        inputs.straggler_slowdown, inputs.straggler_slowdown));
  }
  out.push_back(fmt::format("sensitivity: the recommended plan re-simulated with one input moved by -/+{:.0f}%, others "
                            "fixed (the plan is not re-searched)",
                            100.0 * inputs.sensitivity_fraction));
}
} // namespace

Report build_report(const ReportInputs& inputs) {
  validate_inputs(inputs);
  Report report;
  report.inputs = inputs;
  for (const auto& gpu : inputs.gpus) {
    SearchSpace space = inputs.space;
    space.num_gpus = inputs.num_gpus;
    SearchOptions options;
    options.top_k = 1; // only the best plan per GPU count is reported
    options.jobs = inputs.jobs;
    const SearchResult search =
        run_search(inputs.model, sized(gpu.cluster, inputs.num_gpus.front()), gpu.profile, space, options);
    for (const int num_gpus : inputs.num_gpus) {
      ReportOption option = make_option(inputs, gpu, num_gpus, search);
      if (option.feasible && inputs.straggler_slowdown > 0.0) {
        add_straggler(inputs, gpu, option);
      }
      report.options.push_back(std::move(option));
    }
  }
  choose_recommended(report);
  if (report.recommended) {
    const ReportOption& option = report.options[*report.recommended];
    const auto gpu = std::find_if(inputs.gpus.begin(), inputs.gpus.end(),
                                  [&](const ReportGpu& entry) { return entry.cluster.gpu.name == option.gpu; });
    CUBOID_ASSERT(gpu != inputs.gpus.end(), "recommended GPU {} is not an input", option.gpu);
    const model::ClusterSpec cluster = sized(gpu->cluster, option.num_gpus);
    const model::TaskGraph graph =
        model::build_step_graph(inputs.model, cluster, option.plan, model::Instantiation::RankClasses);
    const SimResult traced = simulate_plan(graph, cluster, gpu->profile, true);
    report.timeline = coalesce_timeline(graph, traced);
    report.timeline_step_s = traced.step_time_s;
    report.memory = stage_memory(graph, traced);
    report.hbm_bytes = traced.hbm_bytes;
    add_sensitivity(report, *gpu, option, graph);
    add_assumptions(report);
    for (const auto& line : model::CostModel(cluster, gpu->profile, option.plan).assumptions()) {
      report.assumptions.push_back(line);
    }
    for (const auto& line : cluster.assumptions) {
      report.assumptions.push_back(line);
    }
  } else {
    add_assumptions(report);
  }
  return report;
}

} // namespace cuboid::sim::analysis
