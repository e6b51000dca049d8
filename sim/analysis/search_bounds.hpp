// Cheap per-plan checks used by the layout search before any simulation: validity (the plan validator), an
// analytic peak-memory estimate (out-of-memory plans are rejected) and a compute lower bound on the step time.
#pragma once

#include "model/cost_profile.hpp"
#include "sim/analysis/search.hpp"

#include <vector>

namespace cuboid::sim::analysis {

/// Sets outcome.status to Rejected (with the validator's message), OutOfMemory (analytic estimate above HBM) or
/// Pruned (a candidate still to be decided), and fills memory_estimate_bytes.
void classify_plan(const model::ModelSpec& model, const model::ClusterSpec& cluster, PlanOutcome& outcome);

/// Fills lower_bound_s of every candidate: hardware FLOPs per GPU at the best achievable efficiency, stretched by
/// the pipeline fill/drain that no schedule avoids ((p-1)/vp micro-batch slots of the lightest stage).
void fill_lower_bounds(const model::ModelSpec& model, const model::ClusterSpec& cluster,
                       const model::CostProfile& profile, std::vector<PlanOutcome>& plans);

} // namespace cuboid::sim::analysis
