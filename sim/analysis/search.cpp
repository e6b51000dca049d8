// Layout search (see search.hpp): enumerate, reject, bound, then simulate in lower-bound order only what can still
// reach the top-k of its GPU count or the time/memory Pareto front.
#include "sim/analysis/search.hpp"

#include "model/cost_model.hpp"
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/step_builder.hpp"
#include "sim/analysis/search_bounds.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <mutex>
#include <numeric>
#include <thread>

namespace cuboid::sim::analysis {

namespace {
// Plans are simulated in batches of this many, in lower-bound order. Fixed (not tied to --jobs or the MPI size) so
// that the set of simulated plans, and so every output, is the same however the work is split.
constexpr std::size_t BATCH_SIZE = 64;
constexpr double INF = std::numeric_limits<double>::infinity();

std::vector<int> divisors(int value) {
  std::vector<int> out;
  for (int candidate = 1; candidate <= value; ++candidate) {
    if (value % candidate == 0) {
      out.push_back(candidate);
    }
  }
  return out;
}

std::vector<std::int64_t> divisors64(std::int64_t value) {
  std::vector<std::int64_t> out;
  for (std::int64_t candidate = 1; candidate <= value / candidate; ++candidate) {
    if (value % candidate == 0) {
      out.push_back(candidate);
      if (candidate != value / candidate) {
        out.push_back(value / candidate);
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

template <typename T>
bool allowed(const std::vector<T>& list, const T& value) {
  return list.empty() || std::find(list.begin(), list.end(), value) != list.end();
}

// Short category of a reason for the "not simulated, by reason" counts: the text before the first ':', and for
// validator messages ("plan: plan.tp: ...") the field that failed.
std::string reason_category(const std::string& reason) {
  const std::size_t colon = reason.find(':');
  if (colon == std::string::npos) {
    return reason;
  }
  const std::string head = reason.substr(0, colon);
  if (head == "plan") {
    const std::size_t field_end = reason.find(':', colon + 1);
    return "invalid " + reason.substr(colon + 2, field_end == std::string::npos ? std::string::npos
                                                                                   : field_end - colon - 2);
  }
  return head;
}

// When pp does not divide the layers, Megatron's --decoder-first/last-pipeline-num-layers let the end stages take
// fewer: middle stages hold ceil(L/pp) layers and the first and last share the rest equally, e.g. Llama 3.1 405B,
// 126 layers on PP16: 7 + 14 x 8 + 7. Returns {0, 0} for an even split or when no such split exists.
std::pair<int, int> uneven_split(std::int64_t num_layers, int pp) {
  if (num_layers % pp == 0 || pp <= 2) {
    return {0, 0};
  }
  const std::int64_t middle = (num_layers + pp - 1) / pp;
  const std::int64_t rest = num_layers - (pp - 2) * middle;
  if (rest < 2 || rest % 2 != 0 || rest / 2 > middle) {
    return {0, 0};
  }
  return {static_cast<int>(rest / 2), static_cast<int>(rest / 2)};
}

model::ClusterSpec resize_cluster(const model::ClusterSpec& cluster, int num_gpus) {
  model::ClusterSpec resized = cluster;
  resized.num_gpus = num_gpus;
  return resized;
}

// --- context parallelism ---
// (cp, pp) pairs for `rest` = num_gpus / tp ranks: cp from the space (default 1) when it divides rest and, for
// cp > 1, seq_length / 2 (the load-balanced causal split); pp every divisor of rest / cp.
// The CP communication types of a (tp, cp) pair: p2p alone for cp = 1 (the type is moot) and by default; a2a only
// where the TP-local heads and query groups split over cp (plan.cpp validate).
std::vector<model::CpCommType> cp_comm_types(const model::ModelSpec& spec, const SearchSpace& space, int tp, int cp) {
  if (cp <= 1 || space.cp_comm_types.empty()) {
    return {model::CpCommType::P2P};
  }
  std::vector<model::CpCommType> types;
  for (const model::CpCommType type : space.cp_comm_types) {
    const bool heads_split = (spec.num_attention_heads / tp) % cp == 0 && (spec.num_query_groups / tp) % cp == 0;
    if (type != model::CpCommType::A2A || heads_split) {
      types.push_back(type);
    }
  }
  return types;
}

std::vector<std::pair<int, int>> cp_pp_pairs(const model::ModelSpec& spec, const SearchSpace& space, int rest) {
  std::vector<std::pair<int, int>> pairs;
  for (const int cp : space.cp.empty() ? std::vector<int>{1} : space.cp) {
    if (cp <= 0 || rest % cp != 0 || (cp > 1 && spec.seq_length % (2 * std::int64_t{cp}) != 0)) {
      continue;
    }
    for (const int pp : divisors(rest / cp)) {
      pairs.emplace_back(cp, pp);
    }
  }
  return pairs;
}

} // namespace

std::string to_string(PlanStatus status) {
  switch (status) {
  case PlanStatus::Simulated:
    return "ok";
  case PlanStatus::Rejected:
    return "rejected";
  case PlanStatus::OutOfMemory:
    return "oom";
  case PlanStatus::Pruned:
    return "pruned";
  }
  return "unknown";
}

namespace {
// --- mixture of experts --- The ep values searched for one dp: the asked ones (invalid ones are listed and
// rejected with the reason), else every divisor of dp that divides the expert count; dense models: ep = 1.
std::vector<int> ep_sizes(const model::ModelSpec& spec, const SearchSpace& space, int dp) {
  if (!space.ep.empty()) {
    return space.ep;
  }
  if (!spec.is_moe()) {
    return {1};
  }
  std::vector<int> sizes;
  for (int ep = 1; ep <= dp; ++ep) {
    if (dp % ep == 0 && spec.num_experts % ep == 0) {
      sizes.push_back(ep);
    }
  }
  return sizes;
}
} // namespace

std::string plan_key(const model::Plan& plan, int num_gpus) {
  std::string key = fmt::format("n{} tp{} pp{} dp{} vp{} mbs{} {} {} sp{} do{} {}", num_gpus, plan.tp, plan.pp, plan.dp,
                                plan.vp, plan.micro_batch_size, model::to_string(plan.schedule),
                                model::to_string(plan.recompute), plan.sequence_parallel ? 1 : 0,
                                plan.distributed_optimizer ? 1 : 0, model::to_string(plan.precision));
  // Suffixes only for the beyond-3D features in use, so that 3D keys (and resumable CSVs) stay as they were.
  if (plan.cp > 1) { // --- context parallelism --- (p2p keys as before the comm type existed)
    key += fmt::format(" cp{}", plan.cp);
    if (plan.cp_comm_type != model::CpCommType::P2P) {
      key += fmt::format("-{}", model::to_string(plan.cp_comm_type));
    }
  }
  if (plan.ep > 1) { // --- mixture of experts ---
    key += fmt::format(" ep{}", plan.ep);
  }
  if (plan.get_zero_stage() >= 2) { // --- ZeRO / FSDP --- (stages 0 and 1 are do0 / do1 above)
    key += fmt::format(" z{}", plan.get_zero_stage());
  }
  return key;
}

std::vector<PlanOutcome> enumerate_space(const model::ModelSpec& spec, const model::ClusterSpec& cluster,
                                         const SearchSpace& space) {
  if (space.global_batch_size <= 0) {
    throw InputError(input_message("command line", "--global-batch-size",
                                   fmt::format("{} must be a positive integer", space.global_batch_size)));
  }
  // Bounded resources: micro-batch sizes are the divisors of global/dp, found in sqrt(global) steps per layout;
  // 2^30 sequences per step (about 1e12 tokens) keeps that instant and is far beyond any real run.
  constexpr std::int64_t MAX_SEARCH_GLOBAL_BATCH = std::int64_t{1} << 30;
  if (space.global_batch_size > MAX_SEARCH_GLOBAL_BATCH) {
    throw InputError(input_message("command line", "--global-batch-size",
                                   fmt::format("{} is too large to search (at most {} sequences per step)",
                                               space.global_batch_size, MAX_SEARCH_GLOBAL_BATCH)));
  }
  const std::vector<int> gpu_counts = space.num_gpus.empty() ? std::vector<int>{cluster.num_gpus} : space.num_gpus;
  const std::vector<model::Schedule> schedules =
      space.schedules.empty() ? std::vector<model::Schedule>{model::Schedule::OneFOneB, model::Schedule::Interleaved}
                              : space.schedules;
  const std::vector<model::Recompute> recomputes =
      space.recompute.empty()
          ? std::vector<model::Recompute>{model::Recompute::None, model::Recompute::Selective, model::Recompute::Full}
          : space.recompute;
  const std::vector<model::Precision> precisions =
      space.precision.empty() ? std::vector<model::Precision>{model::Precision::Bf16} : space.precision;
  // --- ZeRO / FSDP ---
  for (const int zero : space.zero_stages) {
    if (zero < 0 || zero > model::MAX_ZERO_STAGE) {
      throw InputError(input_message("command line", "--zero",
                                     fmt::format("{} is not a valid ZeRO stage (valid: 0, 1, 2, 3)", zero)));
    }
  }
  const std::vector<int> zero_stages = space.zero_stages.empty() ? std::vector<int>{0, 1} : space.zero_stages;
  std::vector<PlanOutcome> out;
  for (const int num_gpus : gpu_counts) {
    const model::ClusterSpec sized = resize_cluster(cluster, num_gpus);
    for (const int tp : divisors(num_gpus)) {
      if (!allowed(space.tp, tp) || (space.tp.empty() && tp > cluster.gpus_per_node && !space.allow_tp_across_nodes)) {
        continue;
      }
      if (space.tp.empty() && (spec.num_attention_heads % tp != 0 || spec.num_query_groups % tp != 0)) {
        continue; // invalid by construction; listed only when the user asked for it explicitly
      }
      // --- context parallelism --- (cp = 1 unless asked for): every (cp, pp) pair that divides num_gpus / tp.
      for (const auto& [cp, pp] : cp_pp_pairs(spec, space, num_gpus / tp)) {
        if (!allowed(space.pp, pp) || pp > spec.num_layers) {
          continue;
        }
        const auto [first_layers, last_layers] = uneven_split(spec.num_layers, pp);
        if (spec.num_layers % pp != 0 && first_layers == 0) {
          continue; // no even split and no Megatron-style uneven one
        }
        const int dp = num_gpus / (tp * cp * pp);
        if (space.global_batch_size % dp != 0) {
          continue; // batch does not split over DP: not a plan of this space
        }
        for (const std::int64_t mbs : divisors64(space.global_batch_size / dp)) {
          if (!allowed(space.micro_batch_size, mbs)) {
            continue;
          }
          for (const model::Schedule schedule : schedules) {
            std::vector<int> vps{1};
            if (schedule == model::Schedule::Interleaved) {
              const std::int64_t microbatches = space.global_batch_size / (mbs * dp);
              if (pp == 1 || first_layers != 0 || (space.vp.empty() && microbatches % pp != 0)) {
                continue; // interleaving needs equal stages and (Megatron) micro-batches divisible by pp
              }
              vps.clear();
              const int per_stage = static_cast<int>(spec.num_layers) / pp;
              for (const int vp : divisors(std::max(per_stage, 1))) {
                if (vp > 1 && allowed(space.vp, vp)) {
                  vps.push_back(vp);
                }
              }
            } else if (schedule == model::Schedule::ZbV) {
              // --- zero-bubble schedules --- zb-v: two V-shaped chunks per rank, always vp = 2
              if (pp == 1 || first_layers != 0 || spec.num_layers % (2 * pp) != 0) {
                continue;
              }
              vps = {2};
            } else if (pp == 1 && schedule != schedules.front()) {
              continue; // without a pipeline every schedule is the same plan: keep one
            }
            for (const int vp : vps) {
              for (const model::Recompute recompute : recomputes) {
                for (const bool sp : {false, true}) {
                  if (!allowed(space.sequence_parallel, sp) || (sp && tp == 1)) {
                    continue;
                  }
                  for (const int zero : zero_stages) { // --- ZeRO / FSDP ---: stage >= 1 = distributed optimizer
                    const bool dist_opt = zero >= 1;
                    if (!allowed(space.distributed_optimizer, dist_opt) || (dist_opt && dp == 1)) {
                      continue;
                    }
                    for (const model::Precision precision : precisions) {
                     for (const int ep : ep_sizes(spec, space, dp)) { // --- mixture of experts ---
                      PlanOutcome outcome;
                      outcome.num_gpus = num_gpus;
                      model::Plan& plan = outcome.plan;
                      plan.tp = tp;
                      plan.pp = pp;
                      plan.dp = dp;
                      plan.vp = vp;
                      plan.micro_batch_size = mbs;
                      plan.global_batch_size = space.global_batch_size;
                      plan.schedule = schedule;
                      plan.recompute = recompute;
                      plan.sequence_parallel = sp;
                      model::set_zero_stage(plan, zero, "command line", "--zero");
                      plan.precision = precision;
                      plan.first_stage_layers = first_layers;
                      plan.last_stage_layers = last_layers;
                      plan.ep = ep;
                      plan.cp = cp;
                      for (const model::CpCommType comm : cp_comm_types(spec, space, tp, cp)) {
                        PlanOutcome variant = outcome;
                        variant.plan.cp_comm_type = comm;
                        classify_plan(spec, sized, variant);
                        out.push_back(std::move(variant));
                      }
                     }
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
  }
  return out;
}

PlanOutcome evaluate_plan(const model::ModelSpec& spec, const model::ClusterSpec& cluster,
                          const model::CostProfile& profile, PlanOutcome outcome) {
  const model::ClusterSpec sized = resize_cluster(cluster, outcome.num_gpus);
  try {
    const model::CostModel cost(sized, profile, outcome.plan);
    const model::TaskGraph graph =
        model::build_step_graph(spec, sized, outcome.plan, model::Instantiation::RankClasses);
    SimOptions sim_options;
    sim_options.record_timeline = false;
    SimResult result = simulate(graph, cost, sim_options);
    for (auto& rank_memory : result.memory) {
      rank_memory.timeline.clear();
      rank_memory.timeline.shrink_to_fit();
    }
    outcome.memory_estimate_bytes = result.peak_memory_bytes;
    outcome.status = result.fits ? PlanStatus::Simulated : PlanStatus::OutOfMemory;
    outcome.reason = result.fits ? std::string{} : fmt::format("out of memory: {}", result.oom_reason);
    outcome.result = std::move(result);
  } catch (const InfeasibleError& e) {
    outcome.status = PlanStatus::Rejected;
    outcome.reason = fmt::format("infeasible: {}", e.what());
  }
  return outcome;
}

std::vector<PlanOutcome> evaluate_plans(const model::ModelSpec& spec, const model::ClusterSpec& cluster,
                                        const model::CostProfile& profile, const std::vector<PlanOutcome>& plans,
                                        int jobs) {
  std::vector<PlanOutcome> results(plans.size());
  std::atomic<std::size_t> next{0};
  const auto worker = [&] {
    for (std::size_t item = next++; item < plans.size(); item = next++) {
      results[item] = evaluate_plan(spec, cluster, profile, plans[item]);
    }
  };
  const int threads_wanted = jobs > 0 ? jobs : static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  const std::size_t num_threads =
      std::min<std::size_t>(static_cast<std::size_t>(threads_wanted), std::max<std::size_t>(plans.size(), 1));
  std::vector<std::thread> threads;
  threads.reserve(num_threads);
  for (std::size_t thread_idx = 1; thread_idx < num_threads; ++thread_idx) {
    threads.emplace_back(worker);
  }
  worker();
  for (auto& thread : threads) {
    thread.join();
  }
  return results;
}

namespace {
// Staircase of simulated, fitting plans: answers "is there a plan with memory <= m and time <= t?" in O(log n).
class Staircase {
public:
  void rebuild(const std::vector<PlanOutcome>& plans) {
    points_.clear();
    for (const auto& outcome : plans) {
      if (outcome.status == PlanStatus::Simulated) {
        points_.emplace_back(outcome.memory_estimate_bytes, outcome.result->step_time_s);
      }
    }
    std::sort(points_.begin(), points_.end());
    for (std::size_t idx = 1; idx < points_.size(); ++idx) {
      points_[idx].second = std::min(points_[idx].second, points_[idx - 1].second);
    }
  }
  [[nodiscard]] bool dominated(double memory_bytes, double time_s) const {
    const auto it = std::upper_bound(points_.begin(), points_.end(), std::make_pair(memory_bytes, INF));
    return it != points_.begin() && std::prev(it)->second <= time_s;
  }

private:
  std::vector<std::pair<double, double>> points_; // (memory, best time at <= memory)
};

// k-th best simulated fitting time per GPU count (INF while fewer than k are known).
std::map<int, double> kth_best_by_gpus(const std::vector<PlanOutcome>& plans, std::size_t top_k) {
  std::map<int, std::vector<double>> times;
  for (const auto& outcome : plans) {
    if (outcome.status == PlanStatus::Simulated) {
      times[outcome.num_gpus].push_back(outcome.result->step_time_s);
    }
  }
  std::map<int, double> out;
  for (auto& [num_gpus, list] : times) {
    std::sort(list.begin(), list.end());
    out[num_gpus] = list.size() >= top_k ? list[top_k - 1] : INF;
  }
  return out;
}

std::vector<std::size_t> pareto_by_memory(const std::vector<PlanOutcome>& plans) {
  std::vector<std::size_t> order;
  for (std::size_t idx = 0; idx < plans.size(); ++idx) {
    if (plans[idx].status == PlanStatus::Simulated) {
      order.push_back(idx);
    }
  }
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const double ta = plans[a].result->step_time_s;
    const double tb = plans[b].result->step_time_s;
    return ta != tb ? ta < tb : (plans[a].memory_estimate_bytes != plans[b].memory_estimate_bytes
                                     ? plans[a].memory_estimate_bytes < plans[b].memory_estimate_bytes
                                     : a < b);
  });
  std::vector<std::size_t> front;
  double best_memory = INF;
  for (const std::size_t idx : order) {
    if (plans[idx].memory_estimate_bytes < best_memory) {
      front.push_back(idx);
      best_memory = plans[idx].memory_estimate_bytes;
    }
  }
  return front;
}
} // namespace

SearchResult run_search(const model::ModelSpec& spec, const model::ClusterSpec& cluster,
                        const model::CostProfile& profile, const SearchSpace& space, SearchOptions options) {
  SearchResult out;
  out.plans = enumerate_space(spec, cluster, space);
  std::vector<PlanOutcome>& plans = out.plans;
  const std::size_t top_k = std::max<std::size_t>(options.top_k, 1);
  if (!options.evaluate) {
    options.evaluate = [&spec, &cluster, &profile, jobs = options.jobs](const std::vector<PlanOutcome>& batch) {
      return evaluate_plans(spec, cluster, profile, batch, jobs);
    };
  }
  fill_lower_bounds(spec, cluster, profile, plans);

  // Candidates in lower-bound order (ties: enumeration order), so batches are the same on every run.
  std::vector<std::size_t> candidates;
  for (std::size_t idx = 0; idx < plans.size(); ++idx) {
    if (plans[idx].status == PlanStatus::Pruned) {
      candidates.push_back(idx); // "pruned" until simulated or proven unnecessary
    }
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](std::size_t a, std::size_t b) { return plans[a].lower_bound_s < plans[b].lower_bound_s; });
  std::vector<bool> done(plans.size(), false);
  std::size_t finished = 0;
  const std::size_t total = candidates.size();
  const auto record = [&](std::size_t idx, PlanOutcome outcome) {
    plans[idx] = std::move(outcome);
    done[idx] = true;
    ++finished;
    ++out.num_simulated;
    if (options.on_done) {
      options.on_done(plans[idx], finished, total);
    }
  };
  // Outcomes known from a previous (interrupted) run are taken as they are.
  for (const std::size_t idx : candidates) {
    const auto known = options.known.find(plan_key(plans[idx].plan, plans[idx].num_gpus));
    if (known != options.known.end()) {
      record(idx, known->second);
      ++out.num_resumed;
    }
  }
  Staircase staircase;
  while (true) {
    staircase.rebuild(plans);
    const std::map<int, double> kth = kth_best_by_gpus(plans, top_k);
    std::vector<std::size_t> batch;
    for (const std::size_t idx : candidates) {
      if (done[idx]) {
        continue;
      }
      const PlanOutcome& outcome = plans[idx];
      const auto found = kth.find(outcome.num_gpus);
      const double threshold = found == kth.end() ? INF : found->second;
      const bool may_be_top = outcome.lower_bound_s < threshold;
      const bool may_be_pareto = !staircase.dominated(outcome.memory_estimate_bytes, outcome.lower_bound_s);
      if (may_be_top || may_be_pareto) {
        batch.push_back(idx);
        if (batch.size() == BATCH_SIZE) {
          break;
        }
      }
    }
    if (batch.empty()) {
      break;
    }
    std::vector<PlanOutcome> inputs;
    inputs.reserve(batch.size());
    for (const std::size_t idx : batch) {
      inputs.push_back(plans[idx]);
    }
    std::vector<PlanOutcome> results = options.evaluate(inputs);
    CUBOID_ASSERT(results.size() == batch.size(), "evaluate returned {} outcomes for {} plans", results.size(),
                  batch.size());
    for (std::size_t item = 0; item < batch.size(); ++item) {
      record(batch[item], std::move(results[item]));
    }
  }
  const std::map<int, double> kth = kth_best_by_gpus(plans, top_k);
  for (std::size_t idx = 0; idx < plans.size(); ++idx) {
    PlanOutcome& outcome = plans[idx];
    if (outcome.status == PlanStatus::Pruned && !done[idx]) {
      const auto found = kth.find(outcome.num_gpus);
      outcome.reason = fmt::format("pruned: lower bound {:.4g} s >= top-{} time {:.4g} s and dominated in memory",
                                   outcome.lower_bound_s, top_k, found == kth.end() ? INF : found->second);
    }
    if (outcome.status != PlanStatus::Simulated) {
      ++out.rejected_by_reason[reason_category(outcome.reason)];
    }
  }

  std::vector<std::size_t> fitting;
  for (std::size_t idx = 0; idx < plans.size(); ++idx) {
    if (plans[idx].status == PlanStatus::Simulated) {
      fitting.push_back(idx);
    }
  }
  std::stable_sort(fitting.begin(), fitting.end(), [&](std::size_t a, std::size_t b) {
    return plans[a].result->step_time_s < plans[b].result->step_time_s;
  });
  out.top.assign(fitting.begin(), fitting.begin() + static_cast<std::ptrdiff_t>(std::min(top_k, fitting.size())));
  out.pareto_memory = pareto_by_memory(plans);
  // GPU-count front: the best plan per GPU count, kept when it is faster than every smaller count's best.
  std::map<int, std::size_t> best_per_count;
  for (const std::size_t idx : fitting) {
    best_per_count.emplace(plans[idx].num_gpus, idx); // fitting is sorted by time: the first seen is the best
  }
  double best_time = INF;
  for (const auto& [num_gpus, idx] : best_per_count) {
    if (plans[idx].result->step_time_s < best_time) {
      out.pareto_gpus.push_back(idx);
      best_time = plans[idx].result->step_time_s;
    }
  }
  return out;
}

} // namespace cuboid::sim::analysis
