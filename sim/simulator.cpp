// simulate(): lowers the TaskGraph (lowering.cpp), replays it (engine.cpp), then derives the step metrics, the
// breakdown on the bottleneck rank (breakdown.cpp) and per-rank memory (memory_timeline.cpp).
#include "sim/simulator.hpp"

#include "model/errors.hpp"
#include "sim/breakdown.hpp"
#include "sim/engine.hpp"
#include "sim/lowering.hpp"
#include "sim/memory_timeline.hpp"

#include <fmt/format.h>

namespace cuboid::sim {

namespace {

constexpr double TERA = 1e12;
constexpr double GB = 1e9;

std::string memory_summary(const model::MemBytes& bytes) {
  std::string out;
  for (std::size_t tag = 0; tag < bytes.size(); ++tag) {
    if (bytes[tag] != 0.0) {
      out += fmt::format("{}{} {:.2f} GB", out.empty() ? "" : ", ", model::to_string(static_cast<model::MemTag>(tag)),
                         bytes[tag] / GB);
    }
  }
  return out;
}

std::string category_of(model::TaskKind kind) {
  switch (kind) {
  case model::TaskKind::Compute:
    return "compute";
  case model::TaskKind::Collective:
    return "collective";
  case model::TaskKind::P2P:
    return "p2p";
  case model::TaskKind::Optimizer:
    return "optimizer";
  }
  return "unknown";
}

} // namespace

SimResult simulate(const model::TaskGraph& graph, const model::CostModel& cost, const SimOptions& options) {
  LoweringOptions lowering;
  lowering.p2p_holds_receiver_stream = options.p2p_holds_receiver_stream;
  const SimProgram program = lower(graph, cost, lowering);

  EngineOptions engine_options;
  engine_options.max_events = options.max_events;
  engine_options.label = [&graph](std::uint32_t task) { return graph.label(task); };
  const EngineResult run = run_engine(program, engine_options);

  SimResult result;
  result.num_events = run.num_events;
  result.step_time_s = run.makespan_s;
  const model::Plan& plan = graph.get_plan();
  const auto num_gpus = static_cast<double>(plan.world_size());
  if (result.step_time_s > 0.0) {
    const double tokens = static_cast<double>(plan.global_batch_size) * static_cast<double>(graph.get_model().seq_length);
    result.tokens_per_s = tokens / result.step_time_s;
    result.tokens_per_s_per_gpu = result.tokens_per_s / num_gpus;
    const double model_flops_per_gpu_s = graph.model_flops_per_step / result.step_time_s / num_gpus;
    result.model_tflops_per_gpu = model_flops_per_gpu_s / TERA;
    result.hw_tflops_per_gpu = graph.hw_flops_per_step / result.step_time_s / num_gpus / TERA;
    const double peak = cost.peak_flops_per_s();
    result.mfu = peak > 0.0 ? model_flops_per_gpu_s / peak : 0.0;
  }

  if (program.num_ranks > 0) {
    std::vector<int> stages(program.num_ranks);
    for (std::size_t idx = 0; idx < stages.size(); ++idx) {
      stages[idx] = graph.ranks()[idx].stage;
    }
    const std::uint32_t bottleneck = find_bottleneck_rank(program, run, stages);
    result.bottleneck_rank = graph.ranks()[bottleneck].rank;
    result.breakdown = compute_breakdown(program, run, bottleneck, result.step_time_s);
    if (result.step_time_s > 0.0) {
      result.bubble_fraction = result.breakdown.bubble_s / result.step_time_s;
    }
  }

  MemoryTimeline memory(graph.ranks(), options.record_memory_timeline);
  memory.replay(program, run);
  const std::size_t peak_index = memory.peak_index();
  result.memory = memory.take_ranks();
  result.hbm_bytes = graph.get_cluster().gpu.hbm_bytes;
  if (!result.memory.empty()) {
    const RankMemory& peak = result.memory[peak_index];
    result.peak_memory_rank = peak.rank;
    result.peak_memory_bytes = peak.peak_bytes;
    result.peak_memory_breakdown = peak.at_peak;
  }
  result.fits = result.peak_memory_bytes <= result.hbm_bytes;
  if (!result.fits) {
    result.oom_reason = fmt::format("rank {} needs {:.2f} GB at its peak but the GPU has {:.2f} GB of HBM ({})",
                                    result.peak_memory_rank, result.peak_memory_bytes / GB, result.hbm_bytes / GB,
                                    memory_summary(result.peak_memory_breakdown));
  }

  if (options.record_timeline) {
    result.timeline.resize(program.tasks.size());
    for (std::uint32_t task = 0; task < program.tasks.size(); ++task) {
      result.timeline[task] = TaskTiming{task, run.start_s[task], run.end_s[task]};
    }
  }
  return result;
}

std::vector<model::TimelineEvent> to_timeline(const model::TaskGraph& graph, const SimResult& result) {
  std::vector<model::TimelineEvent> events;
  events.reserve(result.timeline.size());
  for (const TaskTiming& timing : result.timeline) {
    const model::Task& task = graph.task(timing.id);
    model::TimelineEvent event;
    event.id = timing.id;
    event.rank = task.rank;
    event.stream = task.stream;
    event.start_s = timing.start_s;
    event.end_s = timing.end_s;
    event.name = graph.label(timing.id);
    event.category = category_of(task.kind);
    events.push_back(std::move(event));
  }
  return events;
}

} // namespace cuboid::sim
