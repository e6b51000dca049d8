// Layout search: enumerate every DP/TP/PP plan of a space (micro-batch, schedule, virtual stages, recompute,
// sequence parallelism, distributed optimizer, GPU counts), reject invalid ones with the reason, bound the rest
// cheaply (analytic memory, compute lower bound), and simulate only the plans that can still reach the top-k or the
// Pareto front. The set simulated depends only on the space, never on thread timing, so results are deterministic
// and the same when the work is split across threads or MPI ranks.
#pragma once

#include "model/cost_profile.hpp"
#include "model/gpu_spec.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"
#include "sim/simulator.hpp"

#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cuboid::sim::analysis {

/// Each list empty = "every valid value" (the defaults of issue #6).
struct SearchSpace {
  std::vector<int> num_gpus;               // empty: the cluster's
  std::vector<int> tp;
  std::vector<int> pp;
  std::vector<int> vp;                     // interleaved: virtual stages > 1 that divide layers per stage
  std::vector<std::int64_t> micro_batch_size;
  std::vector<model::Schedule> schedules;  // default 1f1b + interleaved
  std::vector<model::Recompute> recompute; // default none, selective, full
  std::vector<bool> sequence_parallel;     // default on, off (on only when tp > 1)
  std::vector<bool> distributed_optimizer; // default on, off (on only when dp > 1)
  std::vector<model::Precision> precision; // default bf16
  std::int64_t global_batch_size = 0;      // required
  bool allow_tp_across_nodes = false;
  // --- mixture of experts --- expert-parallel sizes; empty: for MoE models every ep that divides both dp and the
  // expert count, for dense models ep = 1 only.
  std::vector<int> ep;
  // --- context parallelism ---
  // CP sizes to try; empty = cp 1 only (CP is opt-in: it only pays for long sequences). Values must divide
  // seq_length / 2 (load-balanced split) and num_gpus / tp; others are skipped.
  std::vector<int> cp;
  // How cp > 1 plans exchange K/V (Megatron --cp-comm-type); empty = p2p only. a2a is skipped where heads/tp or
  // query groups/tp do not divide by cp.
  std::vector<model::CpCommType> cp_comm_types;
  // --- ZeRO / FSDP ---
  // ZeRO stages to search (0..3). Empty: 0 and 1 only, as distributed_optimizer (off, on) lists them; given, it
  // replaces that dimension (stage >= 1 is the distributed optimizer; stages >= 1 only when dp > 1).
  std::vector<int> zero_stages;
};

enum class PlanStatus { Simulated, Rejected, OutOfMemory, Pruned };
std::string to_string(PlanStatus status);

/// One plan of the space and what happened to it. `row` holds the CSV row (plan keys, result keys) once simulated.
struct PlanOutcome {
  model::Plan plan;
  int num_gpus = 0;
  PlanStatus status = PlanStatus::Rejected;
  std::string reason;                      // rejection / OOM / pruning reason
  double lower_bound_s = 0.0;              // compute lower bound on the step time
  double memory_estimate_bytes = 0.0;      // analytic peak memory (replaced by the simulated peak when simulated)
  std::optional<SimResult> result;         // compact result (no timeline) when simulated
};

/// Evaluates plans and returns their outcomes in the same order.
using Evaluator = std::function<std::vector<PlanOutcome>(const std::vector<PlanOutcome>&)>;

struct SearchOptions {
  std::size_t top_k = 10;
  int jobs = 0;                            // threads; 0 = hardware concurrency
  /// Evaluates the given plans and returns their outcomes in the same order. Default: evaluate_plans() on `jobs`
  /// threads. The MPI front end supplies one that splits the plans across ranks and all-gathers the outcomes.
  Evaluator evaluate;
  /// Outcomes already known (from --resume), by plan key; they are not simulated again.
  std::map<std::string, PlanOutcome> known;
  /// Called after each finished plan (for progress bars and incremental CSV); may be empty. Not thread-safe callers:
  /// the search serialises calls.
  std::function<void(const PlanOutcome&, std::size_t done, std::size_t total)> on_done;
};

struct SearchResult {
  std::vector<PlanOutcome> plans;          // every plan of the space, in enumeration order
  std::vector<std::size_t> top;            // indices of the best fitting plans, fastest first
  std::vector<std::size_t> pareto_memory;  // step time vs peak memory front (fitting plans), fastest first
  std::vector<std::size_t> pareto_gpus;    // step time vs GPU count front
  std::map<std::string, std::size_t> rejected_by_reason; // reason category -> count
  std::size_t num_simulated = 0;          // plans with a simulated result, those taken from `known` included
  std::size_t num_resumed = 0;            // of which taken from SearchOptions::known (not simulated again)
};

/// Unique key of a plan within a search ("n1024 tp8 pp16 dp8 vp1 mbs1 1f1b none sp0 do0 bf16").
std::string plan_key(const model::Plan& plan, int num_gpus);

/// Enumerates the space (no simulation). `cluster` gives the system; its num_gpus is the default GPU count.
std::vector<PlanOutcome> enumerate_space(const model::ModelSpec& model, const model::ClusterSpec& cluster,
                                         const SearchSpace& space);

/// Simulates one plan (rank classes), filling status/result. Never throws for infeasible plans: they are Rejected.
PlanOutcome evaluate_plan(const model::ModelSpec& model, const model::ClusterSpec& cluster,
                          const model::CostProfile& profile, PlanOutcome outcome);

/// evaluate_plan() for each plan on `jobs` threads (0 = all cores); outcomes in input order.
std::vector<PlanOutcome> evaluate_plans(const model::ModelSpec& model, const model::ClusterSpec& cluster,
                                        const model::CostProfile& profile, const std::vector<PlanOutcome>& plans,
                                        int jobs);

/// The whole search. `cluster` is re-sized for each GPU count of the space.
SearchResult run_search(const model::ModelSpec& model, const model::ClusterSpec& cluster,
                        const model::CostProfile& profile, const SearchSpace& space, SearchOptions options);

} // namespace cuboid::sim::analysis
