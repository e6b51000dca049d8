// Breakdown: where the step time goes on one rank. Busy time of the compute stream is split by what ran (compute,
// recompute, TP communication inside blocks, optimizer); idle time is attributed to what the next compute task was
// waiting for (a P2P message in flight -> pp_comm, a DP collective -> dp_comm, anything else -> bubble).
#pragma once

#include "sim/engine.hpp"
#include "sim/program.hpp"
#include "sim/simulator.hpp"

#include <vector>

namespace cuboid::sim {

/// Rank index whose compute stream finishes last; ties (relative 1e-12) go to the lowest stage, then lowest index.
/// `stages` gives each rank index its pipeline stage.
std::uint32_t find_bottleneck_rank(const SimProgram& program, const EngineResult& run, const std::vector<int>& stages);

/// Breakdown of [0, step_time_s] on the compute stream of `rank_idx`. The fields sum to step_time_s.
/// Idle gap before a compute task T: let P be T's last-finishing predecessor and ready(P) the end of P's last
/// predecessor. If P is communication, the part of the gap after ready(P) is that communication's exposed time
/// (it was queued or in flight); the rest is bubble. The idle tail after the last compute task is attributed the
/// same way to the rank's last-finishing communication task.
Breakdown compute_breakdown(const SimProgram& program, const EngineResult& run, std::uint32_t rank_idx,
                            double step_time_s);

} // namespace cuboid::sim
