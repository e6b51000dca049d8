// Builds a rank's Program directly from the plan (GPipe, 1F1B, interleaved 1F1B as in Megatron-LM
// core/pipeline_parallel/schedules.py), without the TaskGraph. Used before the IR lowering exists and as an
// independent reference to test the lowering against.
#pragma once

#include "exec/program.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

namespace cuboid::exec {

/// Program of world rank `rank` for one step. Preconditions: the plan is valid for the model; with vp > 1 the
/// number of micro-batches is a multiple of pp (Megatron's requirement for the interleaved schedule).
Program build_internal_program(const model::ModelSpec& model, const model::Plan& plan, int rank);

} // namespace cuboid::exec
