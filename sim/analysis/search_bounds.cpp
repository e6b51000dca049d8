// Cheap per-plan bounds for the layout search (see search_bounds.hpp).
#include "sim/analysis/search_bounds.hpp"

#include "model/errors.hpp"
#include "model/memory_model.hpp"
#include "model/op_catalog.hpp"
#include "model/schedule.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace cuboid::sim::analysis {

namespace {
constexpr double GB = 1e9;

// Peak bytes on `stage`: static state, the activations of the micro-batches the schedule keeps in flight, the head's
// logits on the last stage and one backward's workspace. The same terms the simulator replays, without the replay.
double stage_peak_bytes(const model::ModelSpec& spec, const model::Plan& plan, int stage) {
  double total = 0.0;
  for (const double bytes : model::static_memory(spec, plan, stage)) {
    total += bytes;
  }
  const int m = static_cast<int>(plan.num_microbatches());
  const int in_flight = model::peak_in_flight(
      model::stage_order(model::effective_schedule(plan), plan.pp, stage, m, plan.vp));
  int layers = 0;
  for (const auto& chunk : model::chunk_layouts(plan, spec.num_layers, stage)) {
    layers = std::max(layers, chunk.num_layers);
  }
  total += static_cast<double>(in_flight) * layers * model::layer_activation_bytes(spec, plan);
  if (stage == plan.pp - 1) {
    total += model::head_activation_bytes(spec, plan);
  }
  // --- ZeRO / FSDP --- While a layer's backward runs, its unsharded fp32 gradients (ZeRO >= 2) and, with ZeRO-3,
  // its gathered bf16 parameters are alive: 4P (+ 2P) bytes. The prefetched unit and buffers waiting for their
  // reduce-scatter only add to that, so this stays below the simulated peak.
  if (plan.get_zero_stage() >= 2 && plan.dp > 1 && layers > 0) {
    const double layer_params = model::layer_params_per_tp_rank(spec, plan.tp);
    total += (plan.get_zero_stage() >= 3 ? 6.0 : 4.0) * layer_params;
  }
  return total + model::layer_backward_workspace_bytes(spec, plan);
}
} // namespace

void classify_plan(const model::ModelSpec& spec, const model::ClusterSpec& cluster, PlanOutcome& outcome) {
  try {
    model::validate(outcome.plan, spec, cluster, "plan");
  } catch (const InputError& e) {
    outcome.status = PlanStatus::Rejected;
    outcome.reason = e.what();
    return;
  } catch (const InfeasibleError& e) {
    outcome.status = PlanStatus::Rejected;
    outcome.reason = e.what();
    return;
  }
  double peak = 0.0;
  for (int stage = 0; stage < outcome.plan.pp; ++stage) {
    peak = std::max(peak, stage_peak_bytes(spec, outcome.plan, stage));
  }
  outcome.memory_estimate_bytes = peak;
  if (peak > cluster.gpu.hbm_bytes) {
    outcome.status = PlanStatus::OutOfMemory;
    outcome.reason = fmt::format("out of memory (estimate): {:.1f} GB > {:.1f} GB HBM", peak / GB,
                                 cluster.gpu.hbm_bytes / GB);
    return;
  }
  outcome.status = PlanStatus::Pruned; // a candidate: simulated only if it can still make the top-k or the front
}

void fill_lower_bounds(const model::ModelSpec& spec, const model::ClusterSpec& cluster,
                       const model::CostProfile& profile, std::vector<PlanOutcome>& plans) {
  const double best_efficiency = std::max(profile.gemm_max_efficiency, profile.attention_efficiency);
  for (PlanOutcome& outcome : plans) {
    if (outcome.status != PlanStatus::Pruned) {
      continue;
    }
    const model::Plan& plan = outcome.plan;
    const double peak = cluster.gpu.peak_flops_per_s(plan.precision) * best_efficiency;
    // Each GPU must at least execute its share of the hardware FLOPs at the best efficiency any op reaches...
    const double compute = model::hw_flops_per_step(spec, plan) / outcome.num_gpus / peak;
    // ...and no schedule avoids the pipeline fill and drain: (pp-1)/vp micro-batch slots of a stage's work.
    const double m = static_cast<double>(plan.num_microbatches());
    const double fill = static_cast<double>(plan.pp - 1) / static_cast<double>(plan.vp);
    // The lightest stage (no embedding or head) bounds what a fill slot costs; 0.9 covers the head/embedding share
    // by which stages differ (tests check the bound never exceeds a simulated time).
    constexpr double LIGHTEST_STAGE_SHARE = 0.9;
    outcome.lower_bound_s = compute * (m + LIGHTEST_STAGE_SHARE * fill) / m;
  }
}

} // namespace cuboid::sim::analysis
