// Builds the TaskGraph of one training step from a model, a cluster and a plan (the single builder of DESIGN.md,
// instantiated for all ranks or for rank classes). The schedule (GPipe, 1F1B, interleaved 1F1B) becomes edges.
#pragma once

#include "model/task_graph.hpp"

namespace cuboid::model {

/// Builds the step graph. Preconditions: validate(plan, model, cluster) passed. Throws InfeasibleError when the
/// graph would exceed `max_tasks` (bounded resources) with the count in the message.
TaskGraph build_step_graph(const ModelSpec& model, const ClusterSpec& cluster, const Plan& plan,
                           Instantiation instantiation, std::size_t max_tasks = 20'000'000);

} // namespace cuboid::model
