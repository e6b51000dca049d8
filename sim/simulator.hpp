// Simulator: replays a TaskGraph on a simulated cluster (discrete events: compute streams, comm streams, links with
// bandwidth shared by concurrent flows) and returns step time, throughput, time breakdown and memory timeline.
#pragma once

#include "model/cost_model.hpp"
#include "model/task_graph.hpp"
#include "model/timeline.hpp"

#include <cstddef>
#include <string>
#include <vector>

namespace cuboid::sim {

struct SimOptions {
  bool record_timeline = true;        // keep per-task start/end (needed for --trace)
  std::size_t max_events = 200'000'000; // bounded resources: abort with InfeasibleError beyond this
  bool record_memory_timeline = true; // keep every (time, bytes) point per rank; peaks are computed either way
  bool p2p_holds_receiver_stream = true; // a P2P task occupies the receiver's stream as well as the sender's
};

struct TaskTiming {
  model::TaskId id = 0;
  double start_s = 0.0;
  double end_s = 0.0;
};

/// Where the step time goes on the bottleneck rank; the fields sum to step_time_s.
struct Breakdown {
  double compute_s = 0.0;
  double recompute_s = 0.0;
  double tp_comm_exposed_s = 0.0;
  double pp_comm_exposed_s = 0.0;
  double dp_comm_exposed_s = 0.0;
  double bubble_s = 0.0;
  double optimizer_s = 0.0;
  double ep_comm_exposed_s = 0.0; // --- mixture of experts --- EP all-to-alls inside MoE blocks
  double cp_comm_exposed_s = 0.0; // --- context parallelism --- CP exchanges inside layer blocks (ring excess,
                                  // all-gathers / reduce-scatters, all-to-alls)
};

struct RankMemory {
  int rank = 0;
  double peak_bytes = 0.0;
  model::MemBytes at_peak{};                       // breakdown by tag at the moment of the peak
  std::vector<std::pair<double, double>> timeline; // (time_s, bytes in use) after each change
};

struct SimResult {
  double step_time_s = 0.0;
  double tokens_per_s = 0.0;          // global
  double tokens_per_s_per_gpu = 0.0;
  double model_tflops_per_gpu = 0.0;  // model FLOPs (no recompute) / step time / GPUs / 1e12
  double hw_tflops_per_gpu = 0.0;     // including recompute
  double mfu = 0.0;                   // model FLOP/s per GPU / dense peak
  double bubble_fraction = 0.0;       // bubble_s / step_time_s on the bottleneck rank
  int bottleneck_rank = 0;
  Breakdown breakdown;
  std::vector<TaskTiming> timeline;   // in task-id order when recorded
  std::vector<RankMemory> memory;     // one per materialised rank
  int peak_memory_rank = 0;
  double peak_memory_bytes = 0.0;
  model::MemBytes peak_memory_breakdown{};
  double hbm_bytes = 0.0;
  bool fits = true;
  std::string oom_reason;             // set when !fits: which rank, how much, breakdown
  std::size_t num_events = 0;
};

/// Runs the discrete-event simulation. Throws InfeasibleError on deadlock (names the stuck tasks) or when
/// max_events is exceeded.
SimResult simulate(const model::TaskGraph& graph, const model::CostModel& cost, const SimOptions& options = {});

/// Predicted timeline for the trace writer (model/timeline.hpp): one event per recorded task, on the task's rank
/// and stream, named by graph.label(). Empty when the result was simulated with record_timeline = false.
std::vector<model::TimelineEvent> to_timeline(const model::TaskGraph& graph, const SimResult& result);

} // namespace cuboid::sim
