// SimProgram helpers and ProgramBuilder: CSR construction by counting sort (no per-task allocation).
#include "sim/program.hpp"

#include "model/errors.hpp"

#include <algorithm>
#include <bit>
#include <utility>

namespace cuboid::sim {

double SimProgram::isolated_time_s(std::uint32_t task) const {
  const SimTask& t = tasks[task];
  if (t.kind == SimTaskKind::Fixed) {
    return t.duration_s;
  }
  const CommInstance& inst = instances[t.instance];
  double total_s = 0.0;
  for (std::uint32_t ph = inst.phase_begin; ph < inst.phase_end; ++ph) {
    double longest_s = 0.0;
    for (std::uint32_t fl = phases[ph].flow_begin; fl < phases[ph].flow_end; ++fl) {
      const FlowSpec& flow = flows[fl];
      double bw = std::numeric_limits<double>::infinity();
      if (flow.port_out != NO_INDEX) {
        bw = std::min(bw, port_capacity[flow.port_out]);
      }
      if (flow.port_in != NO_INDEX) {
        bw = std::min(bw, port_capacity[flow.port_in]);
      }
      longest_s = std::max(longest_s, flow.bytes / bw);
    }
    total_s += phases[ph].latency_s + longest_s;
  }
  return total_s;
}

namespace {
bool same_bits(const model::MemBytes& lhs, const model::MemBytes& rhs) {
  for (std::size_t tag = 0; tag < lhs.size(); ++tag) {
    if (std::bit_cast<std::uint64_t>(lhs[tag]) != std::bit_cast<std::uint64_t>(rhs[tag])) {
      return false;
    }
  }
  return true;
}
} // namespace

std::uint32_t MemoryEffectInterner::intern(std::vector<model::MemBytes>& effects, const model::MemBytes& bytes,
                                           std::size_t channel) {
  // Bitwise equality (the replay must add exactly the task's values); all-zero effects (also -0.0) are skipped by
  // the replay, so they get no entry.
  constexpr std::uint64_t NOT_SIGN = ~(std::uint64_t{1} << 63U);
  std::uint64_t magnitudes = 0; // non-zero iff some value != 0.0 (NaN included)
  for (const double value : bytes) {
    magnitudes |= std::bit_cast<std::uint64_t>(value) & NOT_SIGN;
  }
  if (magnitudes == 0) {
    return NO_INDEX;
  }
  // Consecutive tasks mostly alternate between two effects per channel (a layer's forward and backward): try those
  // first.
  std::array<std::uint32_t, 2>& recent_hits = last_[channel];
  for (const std::uint32_t last : recent_hits) {
    if (last < effects.size() && same_bits(effects[last], bytes)) {
      return last;
    }
  }
  std::uint64_t hash = 0;
  for (const double value : bytes) {
    hash = (hash + std::bit_cast<std::uint64_t>(value)) * 0x9E3779B97F4A7C15ULL;
  }
  // The top bits of a multiplicative hash depend on every input bit (byte counts are round numbers: low bits 0).
  std::uint32_t& slot = recent_[hash >> (64U - RECENT_BITS)];
  if (slot == NO_INDEX || slot >= effects.size() || !same_bits(effects[slot], bytes)) {
    slot = static_cast<std::uint32_t>(effects.size());
    effects.push_back(bytes);
  }
  recent_hits[1] = recent_hits[0];
  recent_hits[0] = slot;
  return slot;
}

void MemoryEffectInterner::set_memory(SimProgram& program, std::uint32_t task, const model::MemBytes& alloc_at_start,
                                      const model::MemBytes& free_at_end) {
  SimTask& t = program.tasks[task];
  t.alloc_effect = intern(program.mem_effects, alloc_at_start, 0);
  t.free_effect = intern(program.mem_effects, free_at_end, 1);
}

ProgramBuilder::ProgramBuilder(std::uint32_t num_ranks, double nvlink_bw_bytes_per_s, double nic_bw_bytes_per_s) {
  CUBOID_ASSERT(nvlink_bw_bytes_per_s > 0.0 && nic_bw_bytes_per_s > 0.0, "bandwidths {} {} must be > 0",
                nvlink_bw_bytes_per_s, nic_bw_bytes_per_s);
  program_.num_ranks = num_ranks;
  program_.port_capacity.resize(static_cast<std::size_t>(num_ranks) * PORTS_PER_RANK);
  for (std::uint32_t rank_idx = 0; rank_idx < num_ranks; ++rank_idx) {
    program_.port_capacity[port_id(rank_idx, PortKind::NvlinkOut)] = nvlink_bw_bytes_per_s;
    program_.port_capacity[port_id(rank_idx, PortKind::NvlinkIn)] = nvlink_bw_bytes_per_s;
    program_.port_capacity[port_id(rank_idx, PortKind::NicOut)] = nic_bw_bytes_per_s;
    program_.port_capacity[port_id(rank_idx, PortKind::NicIn)] = nic_bw_bytes_per_s;
  }
}

void ProgramBuilder::reserve(std::size_t num_tasks, std::size_t num_edges) {
  program_.tasks.reserve(num_tasks);
  model::advise_huge_pages(program_.tasks.data(), program_.tasks.capacity() * sizeof(SimTask));
  edges_.reserve(num_edges);
}

void ProgramBuilder::reserve_comm(std::size_t num_instances, std::size_t num_phases, std::size_t num_flows,
                                  std::size_t num_comm_tasks) {
  program_.instances.reserve(num_instances);
  program_.phases.reserve(num_phases);
  program_.flows.reserve(num_flows);
  instance_members_.reserve(num_comm_tasks);
}

std::uint32_t ProgramBuilder::add_fixed(std::uint32_t rank_idx, model::Stream stream, double duration_s,
                                        TaskCategory category, std::uint32_t block_cost) {
  CUBOID_ASSERT(rank_idx < program_.num_ranks, "rank index {} >= {}", rank_idx, program_.num_ranks);
  CUBOID_ASSERT(duration_s >= 0.0, "negative duration {}", duration_s);
  SimTask task;
  task.kind = SimTaskKind::Fixed;
  task.category = category;
  task.executor = executor_id(rank_idx, stream);
  task.duration_s = duration_s;
  task.block_cost = block_cost;
  task.alloc_rank = rank_idx;
  task.free_rank = rank_idx;
  program_.tasks.push_back(task);
  return static_cast<std::uint32_t>(program_.tasks.size() - 1);
}

std::uint32_t ProgramBuilder::add_instance(std::uint32_t participants) {
  CUBOID_ASSERT(participants > 0, "communication instance without participants");
  CommInstance inst;
  inst.participants = participants;
  inst.phase_begin = static_cast<std::uint32_t>(program_.phases.size());
  inst.phase_end = inst.phase_begin;
  program_.instances.push_back(inst);
  return static_cast<std::uint32_t>(program_.instances.size() - 1);
}

void ProgramBuilder::add_phase(std::uint32_t instance, double latency_s) {
  CUBOID_ASSERT(instance + 1 == program_.instances.size(), "phases must be added to the last instance");
  CommPhase phase;
  phase.latency_s = latency_s;
  phase.flow_begin = static_cast<std::uint32_t>(program_.flows.size());
  phase.flow_end = phase.flow_begin;
  program_.phases.push_back(phase);
  program_.instances[instance].phase_end = static_cast<std::uint32_t>(program_.phases.size());
}

void ProgramBuilder::add_flow(double bytes, std::uint32_t port_out, std::uint32_t port_in) {
  CUBOID_ASSERT(!program_.phases.empty(), "flow without a phase");
  CUBOID_ASSERT(port_out == NO_INDEX || port_out < program_.port_capacity.size(), "bad port {}", port_out);
  CUBOID_ASSERT(port_in == NO_INDEX || port_in < program_.port_capacity.size(), "bad port {}", port_in);
  program_.flows.push_back(FlowSpec{bytes, port_out, port_in});
  program_.phases.back().flow_end = static_cast<std::uint32_t>(program_.flows.size());
}

std::uint32_t ProgramBuilder::add_comm_task(std::uint32_t instance, std::uint32_t rank_idx, model::Stream stream,
                                            TaskCategory category, std::uint32_t executor2) {
  CUBOID_ASSERT(rank_idx < program_.num_ranks, "rank index {} >= {}", rank_idx, program_.num_ranks);
  CUBOID_ASSERT(instance < program_.instances.size(), "bad instance {}", instance);
  SimTask task;
  task.kind = SimTaskKind::Comm;
  task.category = category;
  task.executor = executor_id(rank_idx, stream);
  task.executor2 = executor2 == task.executor ? NO_INDEX : executor2;
  task.instance = instance;
  task.alloc_rank = rank_idx;
  task.free_rank = rank_idx;
  program_.tasks.push_back(task);
  const auto id = static_cast<std::uint32_t>(program_.tasks.size() - 1);
  instance_members_.emplace_back(instance, id);
  return id;
}

std::uint32_t ProgramBuilder::add_p2p(std::uint32_t src_rank_idx, std::uint32_t dst_rank_idx, bool nvlink,
                                      double bytes, double latency_s, bool hold_receiver_stream, model::Stream stream) {
  const std::uint32_t inst = add_instance(1);
  add_phase(inst, latency_s);
  const PortKind out = nvlink ? PortKind::NvlinkOut : PortKind::NicOut;
  const PortKind in = nvlink ? PortKind::NvlinkIn : PortKind::NicIn;
  const bool has_dst = dst_rank_idx != NO_INDEX;
  add_flow(bytes, port_id(src_rank_idx, out), has_dst ? port_id(dst_rank_idx, in) : NO_INDEX);
  const std::uint32_t executor2 = hold_receiver_stream && has_dst ? executor_id(dst_rank_idx, stream) : NO_INDEX;
  return add_comm_task(inst, src_rank_idx, stream, TaskCategory::PpComm, executor2);
}

void ProgramBuilder::add_edge(std::uint32_t from, std::uint32_t to) { edges_.emplace_back(from, to); }

std::uint32_t ProgramBuilder::add_block_cost(const model::BlockCost& cost) {
  program_.block_costs.push_back(cost);
  return static_cast<std::uint32_t>(program_.block_costs.size() - 1);
}

namespace {
/// Counting sort of (key, value) pairs into CSR offsets + values; values keep insertion order per key.
void build_csr(std::size_t num_keys, const std::vector<std::pair<std::uint32_t, std::uint32_t>>& pairs, bool by_first,
               std::vector<std::uint32_t>& offsets, std::vector<std::uint32_t>& values) {
  offsets.assign(num_keys + 1, 0);
  for (const auto& [first, second] : pairs) {
    ++offsets[(by_first ? first : second) + 1];
  }
  for (std::size_t key = 0; key < num_keys; ++key) {
    offsets[key + 1] += offsets[key];
  }
  values.resize(pairs.size());
  std::vector<std::uint32_t> cursor(offsets.begin(), offsets.end() - 1);
  for (const auto& [first, second] : pairs) {
    const std::uint32_t key = by_first ? first : second;
    values[cursor[key]++] = by_first ? second : first;
  }
}
} // namespace

SimProgram ProgramBuilder::finish() {
  SimProgram program = finish(edges_);
  edges_.clear();
  return program;
}

SimProgram ProgramBuilder::finish(const std::vector<std::pair<std::uint32_t, std::uint32_t>>& edges) {
  CUBOID_ASSERT(&edges == &edges_ || edges_.empty(), "finish(edges) after add_edge()");
  const std::size_t num_tasks = program_.tasks.size();
  for (const auto& [from, to] : edges) {
    CUBOID_ASSERT(from < num_tasks && to < num_tasks, "edge {} -> {} out of range ({} tasks)", from, to, num_tasks);
  }
  build_csr(num_tasks, edges, true, program_.succ_offsets, program_.succs);
  build_csr(num_tasks, edges, false, program_.pred_offsets, program_.preds);
  program_.pred_count.resize(num_tasks);
  for (std::size_t task = 0; task < num_tasks; ++task) {
    program_.pred_count[task] = program_.pred_offsets[task + 1] - program_.pred_offsets[task];
  }
  std::vector<std::uint32_t> inst_offsets;
  build_csr(program_.instances.size(), instance_members_, true, inst_offsets, program_.instance_tasks);
  for (std::size_t inst = 0; inst < program_.instances.size(); ++inst) {
    CommInstance& ci = program_.instances[inst];
    ci.task_begin = inst_offsets[inst];
    ci.task_end = inst_offsets[inst + 1];
    CUBOID_ASSERT(ci.task_end - ci.task_begin == ci.participants, "instance {} has {} tasks, expected {}", inst,
                  ci.task_end - ci.task_begin, ci.participants);
  }
  instance_members_.clear();
  return std::move(program_);
}

} // namespace cuboid::sim
