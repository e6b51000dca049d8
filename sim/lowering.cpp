// Lowering implementation. Collectives executed by several materialised ranks (one task per member, as exec/
// lowers them to NCCL calls) are matched by (group, k-th collective of that group on the rank): they form one
// instance that starts when every participant reached the head of its stream, like a real NCCL call.
#include "sim/lowering.hpp"

#include "model/errors.hpp"
#include "model/rank_grid.hpp"
#include "sim/collectives/collective.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

namespace cuboid::sim {

namespace {

using collectives::Fabric;

std::uint32_t to_u32(std::size_t value) { return static_cast<std::uint32_t>(value); }

double usable_bw(double bw_bytes_per_s) { return bw_bytes_per_s > 0.0 ? bw_bytes_per_s : 1.0; }

// `describe` names the task; it is called only on failure (formatting a message per task cost 9 % of a 1T run).
template <typename Describe>
void require_fabric(const collectives::Links& links, Fabric fabric, const Describe& describe) {
  if (links.of(fabric).bw_bytes_per_s <= 0.0) {
    throw InfeasibleError(fmt::format("{} needs the {} but the cost model gives it bandwidth 0", describe(),
                                      fabric == Fabric::Nvlink ? "NVLink" : "network (NIC)"));
  }
}

PortKind out_port(Fabric fabric) { return fabric == Fabric::Nvlink ? PortKind::NvlinkOut : PortKind::NicOut; }
PortKind in_port(Fabric fabric) { return fabric == Fabric::Nvlink ? PortKind::NvlinkIn : PortKind::NicIn; }

} // namespace

std::vector<int> full_group_members(const model::TaskGraph& graph, const model::Task& task) {
  const std::vector<int>& materialised = graph.groups()[static_cast<std::size_t>(task.group_index)];
  if (static_cast<int>(materialised.size()) == task.group_size) {
    return materialised;
  }
  const model::Plan& plan = graph.get_plan();
  const model::RankGrid grid(plan.tp, plan.cp, plan.dp, plan.pp);
  switch (task.group) {
  case model::GroupKind::Tp:
    return grid.tp_group(task.rank);
  case model::GroupKind::Dp:
    return grid.dp_cp_group(task.rank); // the gradient group: dp*cp ranks (= dp_group when cp = 1)
  case model::GroupKind::Pp:
    return grid.pp_group(task.rank);
  case model::GroupKind::ExpertDp: // --- mixture of experts ---
    return grid.expert_dp_group(task.rank, plan.ep);
  case model::GroupKind::Embedding: // always materialised whole (two ranks)
    return materialised;
  }
  return materialised;
}

SimProgram lower(const model::TaskGraph& graph, const model::CostModel& cost, const LoweringOptions& options) {
  const std::vector<model::Task>& tasks = graph.tasks();
  const std::vector<model::RankInfo>& ranks = graph.ranks();
  const model::ClusterSpec& cluster = graph.get_cluster();
  const collectives::Links links{cost.nvlink(), cost.network()};

  // World rank -> materialised index (flat vector: world ranks are dense).
  int max_rank = 0;
  for (const model::RankInfo& info : ranks) {
    max_rank = std::max(max_rank, info.rank);
  }
  std::vector<std::uint32_t> rank_idx(static_cast<std::size_t>(max_rank) + 1, NO_INDEX);
  for (std::size_t idx = 0; idx < ranks.size(); ++idx) {
    rank_idx[static_cast<std::size_t>(ranks[idx].rank)] = to_u32(idx);
  }
  auto index_of = [&rank_idx](int rank) {
    return rank >= 0 && static_cast<std::size_t>(rank) < rank_idx.size() ? rank_idx[static_cast<std::size_t>(rank)]
                                                                          : NO_INDEX;
  };

  ProgramBuilder builder(to_u32(ranks.size()), usable_bw(links.nvlink.bw_bytes_per_s),
                         usable_bw(links.nic.bw_bytes_per_s));
  builder.reserve(tasks.size(), 0);

  // Collective matching, pass 1: k-th collective of group g on a rank -> participant count of instance (g, k).
  const std::size_t num_groups = graph.groups().size();
  std::vector<std::vector<std::pair<std::int32_t, std::uint32_t>>> seen_per_rank(ranks.size()); // (group, count)
  std::vector<std::uint32_t> occurrence(tasks.size(), 0);
  std::vector<std::vector<std::uint32_t>> participants(num_groups);
  std::size_t num_p2p = 0;
  std::size_t num_collective = 0;
  for (std::size_t id = 0; id < tasks.size(); ++id) {
    const model::Task& task = tasks[id];
    if (task.kind != model::TaskKind::Collective) {
      num_p2p += task.kind == model::TaskKind::P2P ? 1U : 0U;
      continue;
    }
    ++num_collective;
    CUBOID_ASSERT(task.group_index >= 0 && static_cast<std::size_t>(task.group_index) < num_groups,
                  "collective task {} has group index {} of {}", id, task.group_index, num_groups);
    const std::uint32_t ridx = index_of(task.rank);
    CUBOID_ASSERT(ridx != NO_INDEX, "task {} runs on rank {} which is not materialised", id, task.rank);
    auto& seen = seen_per_rank[ridx];
    auto it = std::find_if(seen.begin(), seen.end(), [&task](const auto& entry) { return entry.first == task.group_index; });
    if (it == seen.end()) {
      seen.emplace_back(task.group_index, 0);
      it = seen.end() - 1;
    }
    occurrence[id] = it->second++;
    auto& counts = participants[static_cast<std::size_t>(task.group_index)];
    if (counts.size() <= occurrence[id]) {
      counts.resize(occurrence[id] + 1, 0);
    }
    ++counts[occurrence[id]];
  }
  // P2P: one instance, phase and flow each; a collective task: at most one instance, at least one phase.
  builder.reserve_comm(num_p2p + num_collective, num_p2p + num_collective, num_p2p, num_p2p + num_collective);
  std::vector<std::vector<std::uint32_t>> instance_of(num_groups);
  std::vector<collectives::GroupLayout> layouts(num_groups);
  std::vector<bool> has_layout(num_groups, false);
  std::vector<std::uint32_t> block_cost_index(graph.blocks().size(), NO_INDEX);

  for (std::size_t id = 0; id < tasks.size(); ++id) {
    const model::Task& task = tasks[id];
    const std::uint32_t ridx = index_of(task.rank);
    CUBOID_ASSERT(ridx != NO_INDEX, "task {} runs on rank {} which is not materialised", id, task.rank);
    std::uint32_t sim_id = NO_INDEX;
    switch (task.kind) {
    case model::TaskKind::Compute:
    case model::TaskKind::Optimizer: {
      const TaskCategory category =
          task.kind == model::TaskKind::Optimizer ? TaskCategory::Optimizer : TaskCategory::Compute;
      if (task.block < 0) {
        sim_id = builder.add_fixed(ridx, task.stream, 0.0, category);
        break;
      }
      const auto block = static_cast<std::size_t>(task.block);
      CUBOID_ASSERT(block < graph.blocks().size(), "task {} has block {} of {}", id, block, graph.blocks().size());
      if (block_cost_index[block] == NO_INDEX) {
        block_cost_index[block] = builder.add_block_cost(cost.block_cost(graph.blocks()[block]));
      }
      const double duration_s = builder.block_cost(block_cost_index[block]).total_s;
      sim_id = builder.add_fixed(ridx, task.stream, duration_s, category, block_cost_index[block]);
      break;
    }
    case model::TaskKind::P2P: {
      const bool same_node = cluster.gpus_per_node > 0 && cluster.node_of(task.rank) == cluster.node_of(task.peer);
      const Fabric fabric = same_node ? Fabric::Nvlink : Fabric::Nic;
      if (task.msg_bytes > 0.0) {
        require_fabric(links, fabric,
                       [&] { return fmt::format("P2P task {} (rank {} -> {})", id, task.rank, task.peer); });
      }
      sim_id = builder.add_p2p(ridx, index_of(task.peer), same_node, task.msg_bytes, links.of(fabric).latency_s,
                               options.p2p_holds_receiver_stream, task.stream);
      break;
    }
    case model::TaskKind::Collective: {
      const auto group = static_cast<std::size_t>(task.group_index);
      std::vector<std::uint32_t>& instances = instance_of[group];
      if (instances.size() <= occurrence[id]) {
        instances.resize(participants[group].size(), NO_INDEX);
      }
      std::uint32_t& inst = instances[occurrence[id]];
      if (inst == NO_INDEX) {
        if (!has_layout[group]) {
          layouts[group] = collectives::layout_of(full_group_members(graph, task), cluster);
          layouts[group].size = std::max(1, task.group_size);
          has_layout[group] = true;
        }
        const collectives::CollectiveSchedule schedule =
            collectives::choose(task.collective, task.msg_bytes, layouts[group], links);
        inst = builder.add_instance(participants[group][occurrence[id]]);
        for (const collectives::PhaseSpec& phase : schedule.phases) {
          builder.add_phase(inst, phase.latency_s);
          for (const Fabric fabric : {Fabric::Nvlink, Fabric::Nic}) {
            if (phase.bytes(fabric) <= 0.0) {
              continue;
            }
            require_fabric(links, fabric, [&] { return fmt::format("collective task {} (group {})", id, group); });
            for (const int member : graph.groups()[group]) {
              const std::uint32_t midx = index_of(member);
              if (midx != NO_INDEX) {
                builder.add_flow(phase.bytes(fabric), port_id(midx, out_port(fabric)), port_id(midx, in_port(fabric)));
              }
            }
          }
        }
      }
      sim_id = builder.add_comm_task(inst, ridx, task.stream, TaskCategory::DpComm);
      break;
    }
    }
    CUBOID_ASSERT(sim_id == id, "lowered task {} got index {}", id, sim_id);
    builder.set_memory(sim_id, task.alloc_at_start, task.free_at_end);
  }
  return builder.finish(graph.edges());
}

} // namespace cuboid::sim
