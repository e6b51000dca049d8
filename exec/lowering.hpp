// Lowering: TaskGraph (Instantiation::AllRanks) -> the ordered Program of one rank, so the run follows exactly the
// simulated schedule. The rank's compute-stream tasks keep the order of a deterministic topological sort of the
// whole graph (ties by task id), which is the schedule's order because the schedule is edges. Around them:
//   P2P task (sender -> peer):  Send right after its producer on the sender; Recv right before its first consumer
//                               on the receiver (blocking receives as late as possible, sends never block);
//   DP Collective task:         CollectiveStart after its last predecessor, CollectiveWait before its first
//                               successor (the optimizer); bucket k = k-th DP collective, sized by msg_bytes;
//   Optimizer task:             OptimizerStep;
//   Compute task:               Forward/Backward of the layer (task.layer >= 0), of the embedding or of the head
//                               (by the op block's ops: "embed", "logits"/"loss"), TP collectives run inside.
// Free(chunk, microbatch) follows the last backward of each (chunk, micro-batch).
#pragma once

#include "exec/program.hpp"
#include "model/task_graph.hpp"

#include <vector>

namespace cuboid::exec {

/// Program of world rank `rank`. Throws InputError if the graph is not an all-ranks instantiation.
Program lower_to_program(const model::TaskGraph& graph, int rank);

/// Programs of every rank (one topological sort shared by all).
std::vector<Program> lower_all_ranks(const model::TaskGraph& graph);

} // namespace cuboid::exec
