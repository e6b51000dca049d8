// Engine implementation. Why dispatch is deferred to the end of each instant: tasks that become ready at the same
// simulated time must be ordered by task id, not by the order in which their predecessors' events were popped,
// so that the replay is deterministic and the two instantiations (all ranks, rank classes) order ties alike.
#include "sim/engine.hpp"

#include "model/errors.hpp"
#include "sim/event_queue.hpp"
#include "sim/network.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace cuboid::sim {

namespace {

constexpr std::size_t MAX_STUCK_REPORTED = 5;
constexpr std::size_t MAX_PREDS_REPORTED = 4;
constexpr std::size_t SUCCS_AHEAD = 16; // one cache line of successor ids

struct ReadyEntry {
  double ready_s = 0.0;
  std::uint32_t task = 0;
};
// Max-heap comparator that puts the earliest ready time, then the lowest task id, on top (a function object, so
// that the heap algorithms inline it).
struct After {
  bool operator()(const ReadyEntry& lhs, const ReadyEntry& rhs) const {
    if (lhs.ready_s != rhs.ready_s) {
      return lhs.ready_s > rhs.ready_s;
    }
    return lhs.task > rhs.task;
  }
};
constexpr After after{};

struct Executor {
  std::uint32_t running = NO_INDEX;
  bool dirty = false;
  std::vector<ReadyEntry> ready; // heap ordered by after()
};

struct InstanceState {
  std::uint32_t arrived = 0;
  std::uint32_t phase = 0;
  std::uint32_t outstanding_flows = 0;
};

class Engine {
public:
  Engine(const SimProgram& program, const EngineOptions& options)
      : program_(program), options_(options), network_(program.port_capacity) {}

  EngineResult run();

private:
  void make_ready(std::uint32_t task, double now_s);
  void mark_dirty(std::uint32_t executor);
  void dispatch(double now_s);
  void dispatch_executor(std::uint32_t executor, double now_s);
  void start_task(std::uint32_t task, double now_s);
  void finish_task(std::uint32_t task, double now_s);
  void begin_phase(std::uint32_t inst, std::uint32_t phase, double now_s);
  void start_flows(std::uint32_t inst, double now_s);
  void complete_instance(std::uint32_t inst, double now_s);
  [[noreturn]] void report_deadlock(double now_s) const;
  [[nodiscard]] std::string label(std::uint32_t task) const {
    return options_.label ? options_.label(task) : fmt::format("task {}", task);
  }

  const SimProgram& program_;
  const EngineOptions& options_;
  Network network_;
  EventQueue queue_;
  std::vector<Executor> executors_;
  std::vector<std::uint32_t> dirty_;
  std::vector<std::uint32_t> pred_remaining_;
  std::vector<InstanceState> instances_;
  std::size_t finished_ = 0;
  EngineResult result_;
};

void Engine::mark_dirty(std::uint32_t executor) {
  if (!executors_[executor].dirty) {
    executors_[executor].dirty = true;
    dirty_.push_back(executor);
  }
}

void Engine::make_ready(std::uint32_t task, double now_s) {
  const SimTask& t = program_.tasks[task];
  for (const std::uint32_t executor : {t.executor, t.executor2}) {
    if (executor == NO_INDEX) {
      continue;
    }
    std::vector<ReadyEntry>& heap = executors_[executor].ready;
    heap.push_back(ReadyEntry{now_s, task});
    std::push_heap(heap.begin(), heap.end(), after);
    mark_dirty(executor);
  }
}

void Engine::dispatch(double now_s) {
  // dirty_ may grow while we iterate (a zero-time instance ending frees executors and readies successors, possibly
  // on an executor already visited): clear the flag before visiting so such an executor is queued again.
  for (std::size_t idx = 0; idx < dirty_.size(); ++idx) {
    const std::uint32_t executor = dirty_[idx];
    executors_[executor].dirty = false;
    dispatch_executor(executor, now_s);
  }
  dirty_.clear();
}

void Engine::dispatch_executor(std::uint32_t executor, double now_s) {
  Executor& exec = executors_[executor];
  while (exec.running == NO_INDEX && !exec.ready.empty()) {
    const std::uint32_t task = exec.ready.front().task;
    const SimTask& t = program_.tasks[task];
    if (t.executor2 != NO_INDEX) {
      // Held on two executors: both must be idle with this task at the head. The (ready time, id) order is the same
      // on every executor, so the globally first queued task is at the head of both and cannot deadlock.
      const std::uint32_t other = t.executor == executor ? t.executor2 : t.executor;
      Executor& peer = executors_[other];
      if (peer.running != NO_INDEX || peer.ready.front().task != task) {
        return;
      }
      std::pop_heap(peer.ready.begin(), peer.ready.end(), after);
      peer.ready.pop_back();
    }
    std::pop_heap(exec.ready.begin(), exec.ready.end(), after);
    exec.ready.pop_back();
    start_task(task, now_s);
  }
}

void Engine::start_task(std::uint32_t task, double now_s) {
  const SimTask& t = program_.tasks[task];
  result_.start_s[task] = now_s;
  result_.start_order.push_back(task);
  executors_[t.executor].running = task;
  if (t.executor2 != NO_INDEX) {
    executors_[t.executor2].running = task;
  }
  // What finish_task() will touch (its successors' counters and tasks) is scattered over ranks' regions of the
  // arrays: prefetch it now, while the task runs (on a pipeline, dozens of other events come first).
  const std::uint32_t succ_end = program_.succ_offsets[task + 1];
  if (succ_end + SUCCS_AHEAD < program_.succs.size()) {
    __builtin_prefetch(&program_.succs[succ_end + SUCCS_AHEAD]); // the next tasks' (a rank's tasks are consecutive)
  }
  for (std::uint32_t idx = program_.succ_offsets[task]; idx < succ_end; ++idx) {
    const std::uint32_t succ = program_.succs[idx];
    __builtin_prefetch(&pred_remaining_[succ], 1);
    __builtin_prefetch(&program_.tasks[succ]);
    __builtin_prefetch(&result_.start_s[succ], 1);
    __builtin_prefetch(&result_.end_s[succ], 1);
    __builtin_prefetch(&program_.succ_offsets[succ]);
  }
  if (t.kind == SimTaskKind::Fixed) {
    queue_.push(now_s + t.duration_s, EventKind::TaskEnd, task);
    return;
  }
  InstanceState& state = instances_[t.instance];
  if (++state.arrived == program_.instances[t.instance].participants) {
    begin_phase(t.instance, program_.instances[t.instance].phase_begin, now_s);
  }
}

void Engine::begin_phase(std::uint32_t inst, std::uint32_t phase, double now_s) {
  instances_[inst].phase = phase;
  if (phase == program_.instances[inst].phase_end) {
    complete_instance(inst, now_s);
    return;
  }
  const double latency_s = program_.phases[phase].latency_s;
  if (latency_s > 0.0) {
    queue_.push(now_s + latency_s, EventKind::PhaseLatency, inst);
    return;
  }
  start_flows(inst, now_s);
}

void Engine::start_flows(std::uint32_t inst, double now_s) {
  InstanceState& state = instances_[inst];
  const CommPhase& phase = program_.phases[state.phase];
  state.outstanding_flows = 0;
  for (std::uint32_t fl = phase.flow_begin; fl < phase.flow_end; ++fl) {
    const FlowSpec& flow = program_.flows[fl];
    if (flow.bytes > 0.0) {
      network_.start_flow(now_s, flow.bytes, flow.port_out, flow.port_in, inst, queue_);
      ++state.outstanding_flows;
    }
  }
  if (state.outstanding_flows == 0) {
    begin_phase(inst, state.phase + 1, now_s);
  }
}

void Engine::complete_instance(std::uint32_t inst, double now_s) {
  const CommInstance& ci = program_.instances[inst];
  for (std::uint32_t idx = ci.task_begin; idx < ci.task_end; ++idx) {
    finish_task(program_.instance_tasks[idx], now_s);
  }
}

void Engine::finish_task(std::uint32_t task, double now_s) {
  const SimTask& t = program_.tasks[task];
  result_.end_s[task] = now_s;
  result_.end_order.push_back(task);
  ++finished_;
  for (const std::uint32_t executor : {t.executor, t.executor2}) {
    if (executor != NO_INDEX) {
      executors_[executor].running = NO_INDEX;
      mark_dirty(executor);
    }
  }
  const std::uint32_t succ_end = program_.succ_offsets[task + 1];
  if (succ_end + SUCCS_AHEAD < program_.succs.size()) {
    __builtin_prefetch(&program_.succs[succ_end + SUCCS_AHEAD]); // the next tasks' (a rank's tasks are consecutive)
  }
  for (std::uint32_t idx = program_.succ_offsets[task]; idx < succ_end; ++idx) {
    const std::uint32_t succ = program_.succs[idx];
    if (--pred_remaining_[succ] == 0) {
      make_ready(succ, now_s);
    }
  }
}

EngineResult Engine::run() {
  const std::size_t num_tasks = program_.tasks.size();
  executors_.resize(program_.num_executors());
  pred_remaining_ = program_.pred_count;
  instances_.assign(program_.instances.size(), InstanceState{});
  result_.start_s.assign(num_tasks, -1.0);
  result_.end_s.assign(num_tasks, -1.0);
  result_.start_order.reserve(num_tasks);
  result_.end_order.reserve(num_tasks);
  queue_.reserve(program_.num_executors() * 2 + 64);

  for (std::uint32_t task = 0; task < num_tasks; ++task) {
    const SimTask& t = program_.tasks[task];
    CUBOID_ASSERT(t.executor < executors_.size() && (t.executor2 == NO_INDEX || t.executor2 < executors_.size()),
                  "task {} on executor {} / {} of {}", task, t.executor, t.executor2, executors_.size());
    if (pred_remaining_[task] == 0) {
      make_ready(task, 0.0);
    }
  }
  double now_s = 0.0;
  dispatch(now_s);
  while (!queue_.empty()) {
    now_s = queue_.top_time_s();
    while (!queue_.empty() && queue_.top_time_s() == now_s) {
      const Event event = queue_.pop();
      if (++result_.num_events > options_.max_events) {
        throw InfeasibleError(fmt::format("simulation exceeded max_events = {} at t = {:.6g} s ({} of {} tasks done)",
                                          options_.max_events, now_s, finished_, num_tasks));
      }
      switch (event.kind) {
      case EventKind::TaskEnd:
        finish_task(event.a, now_s);
        break;
      case EventKind::PhaseLatency:
        start_flows(event.a, now_s);
        break;
      case EventKind::FlowEnd:
        if (network_.is_current(event.a, event.b)) {
          const std::uint32_t inst = network_.finish_flow(now_s, event.a, queue_);
          if (--instances_[inst].outstanding_flows == 0) {
            begin_phase(inst, instances_[inst].phase + 1, now_s);
          }
        }
        break;
      }
    }
    dispatch(now_s);
  }
  if (finished_ != num_tasks) {
    report_deadlock(now_s);
  }
  result_.makespan_s = now_s;
  for (std::uint32_t task = 0; task < num_tasks; ++task) {
    result_.makespan_s = std::max(result_.makespan_s, result_.end_s[task]);
  }
  result_.port_bytes.resize(network_.num_ports());
  for (std::uint32_t port = 0; port < network_.num_ports(); ++port) {
    result_.port_bytes[port] = network_.get_port_bytes(port);
  }
  return std::move(result_);
}

void Engine::report_deadlock(double now_s) const {
  const std::size_t num_tasks = program_.tasks.size();
  std::string details;
  std::size_t reported = 0;
  for (std::uint32_t task = 0; task < num_tasks && reported < MAX_STUCK_REPORTED; ++task) {
    if (result_.end_s[task] >= 0.0) {
      continue;
    }
    const SimTask& t = program_.tasks[task];
    std::string why;
    if (result_.start_s[task] >= 0.0) {
      const CommInstance& ci = program_.instances[t.instance];
      why = fmt::format("started, waiting for {} more participant(s) of its communication",
                        ci.participants - instances_[t.instance].arrived);
    } else if (pred_remaining_[task] == 0) {
      const std::uint32_t blocker = executors_[t.executor].running;
      if (blocker == NO_INDEX) {
        continue; // queued behind another stuck task on a second executor: reported through that one
      }
      why = fmt::format("ready, queued behind '{}' on its stream", label(blocker));
    } else {
      std::vector<std::string> preds;
      for (std::uint32_t idx = program_.pred_offsets[task]; idx < program_.pred_offsets[task + 1]; ++idx) {
        const std::uint32_t pred = program_.preds[idx];
        if (result_.end_s[pred] < 0.0 && preds.size() < MAX_PREDS_REPORTED) {
          preds.push_back(fmt::format("'{}'", label(pred)));
        }
      }
      why = fmt::format("waits for {} unfinished predecessor(s): {}", pred_remaining_[task],
                        fmt::join(preds, ", "));
    }
    details += fmt::format("\n  '{}' {}", label(task), why);
    ++reported;
  }
  throw InfeasibleError(fmt::format("deadlock: {} of {} tasks can never run (dependency cycle, or a predecessor that "
                                    "never runs) at t = {:.6g} s; stuck tasks:{}",
                                    num_tasks - finished_, num_tasks, now_s, details));
}

} // namespace

EngineResult run_engine(const SimProgram& program, const EngineOptions& options) {
  Engine engine(program, options);
  return engine.run();
}

} // namespace cuboid::sim
