// Lowering: TaskGraph + CostModel -> SimProgram. Compute and optimizer tasks get their block's cost (cached per
// block); P2P tasks become one flow between the two ranks' ports; collectives become communication instances whose
// phases come from the chosen algorithm (collectives/collective.hpp), with one flow per materialised member.
#pragma once

#include "model/cost_model.hpp"
#include "model/task_graph.hpp"
#include "sim/program.hpp"

#include <vector>

namespace cuboid::sim {

struct LoweringOptions {
  /// A P2P task also occupies the receiver's stream (send and receive are one NCCL pair on both ranks).
  bool p2p_holds_receiver_stream = true;
};

/// Builds the program. Task i of the program is task i of the graph. Throws InfeasibleError when a message must
/// cross a fabric the cluster does not have (bandwidth 0).
SimProgram lower(const model::TaskGraph& graph, const model::CostModel& cost, const LoweringOptions& options = {});

/// Full member list (world ranks) of a collective task's group: the materialised group when it is complete, else
/// the rank grid's group of that kind containing task.rank (rank classes materialise only representatives).
std::vector<int> full_group_members(const model::TaskGraph& graph, const model::Task& task);

} // namespace cuboid::sim
