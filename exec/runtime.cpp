// Runtime: executes this rank's Program step after step. Activations live per (chunk, micro-batch); P2P sends keep
// their buffer until the end of the step; DP gradient buckets are contiguous ranges of the flat gradient
// buffer, reduced asynchronously between CollectiveStart and CollectiveWait; the optimizer step finishes gradient
// reduction (tied-embedding group, sequence-parallel norms) and applies AdamW.
#include "exec/runtime.hpp"

#include "model/schedule.hpp"

#include "exec/data.hpp"
#include "exec/gpt_model.hpp"
#include "exec/internal_schedule.hpp"
#include "exec/lowering.hpp"
#include "exec/process_groups.hpp"
#include "exec/watchdog.hpp"
#include "exec/zero_shards.hpp"
#include "model/errors.hpp"
#include "model/rank_grid.hpp"
#include "model/step_builder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <limits>
#include <map>
#include <numeric>
#include <thread>
#include <time.h>

namespace cuboid::exec {

using cpu::Mat;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// CPU time of the calling thread (user + system): a task's own work, without the time another process had the core.
double thread_cpu_time_s() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

struct MicroState {
  Mat act;                          // forward activation flowing through the chunk (n, C)
  Mat grad;                         // its gradient flowing back
  std::map<int, LayerCache> layers; // by global layer
  HeadCache head;
  std::map<int, WeightGradWork> pending_w; // zero-bubble: deferred W per global layer (-1: the head)
  MicroBatch data;
  bool has_data = false;
};

struct PendingSend {
  int chunk = 0;
  int microbatch = 0;
  std::unique_ptr<Mat> buffer;
  std::unique_ptr<Request> request;
};

struct Bucket {
  std::size_t begin = 0; // range of the flat gradient buffer
  std::size_t end = 0;
  std::unique_ptr<Request> request;
};

std::string category_of(InstrKind kind) {
  switch (kind) {
  case InstrKind::Forward:
  case InstrKind::Backward:
  case InstrKind::WeightGrad: return "compute";
  case InstrKind::LocalMove: return "memory";
  case InstrKind::Send:
  case InstrKind::Recv: return "p2p";
  case InstrKind::CollectiveStart:
  case InstrKind::CollectiveWait: return "collective";
  case InstrKind::OptimizerStep: return "optimizer";
  case InstrKind::Free: return "memory";
  }
  return "?";
}

// CPU runs need no GPU description: the IR only needs the rank count (and uses it for node boundaries).
// The pipeline stage holding the output layer and loss: the last virtual stage's (zb-v: stage 0).
int head_stage(const model::Plan& plan) { return model::locate_virtual_stage(plan, plan.pp * plan.vp - 1).stage; }

RunOptions with_world_size(RunOptions options, int world_size) {
  options.cluster.num_gpus = world_size;
  if (options.cluster.gpus_per_node <= 0) {
    options.cluster.gpus_per_node = world_size;
  }
  return options;
}

void validate_options(const RunOptions& options, const Communicator& world) {
  const model::Plan& plan = options.plan;
  if (world.size() != plan.world_size()) {
    throw InputError(input_message("command line", "plan",
                                   plan.cp == 1 ? fmt::format("tp*pp*dp = {}*{}*{} = {} but {} ranks were started",
                                                              plan.tp, plan.pp, plan.dp, plan.world_size(),
                                                              world.size())
                                                : fmt::format("tp*cp*pp*dp = {}*{}*{}*{} = {} but {} ranks were "
                                                              "started",
                                                              plan.tp, plan.cp, plan.pp, plan.dp, plan.world_size(),
                                                              world.size())));
  }
  validate_context_parallel_run(plan);
  model::ClusterSpec cluster = options.cluster;
  cluster.num_gpus = world.size();
  model::validate(plan, options.model, cluster, "run options");
  if (options.steps < 1) {
    throw InputError(input_message("command line", "steps", fmt::format("{} (expected >= 1)", options.steps)));
  }
  const model::ModelSpec& m = options.model;
  validate_moe_run(m, plan, options.program_source); // --- mixture of experts ---
  const auto check_divides = [](std::int64_t value, std::int64_t by, const char* what, const char* by_name) {
    if (by <= 0 || value % by != 0) {
      throw InputError(input_message("command line", "plan", fmt::format("{} = {} is not divisible by {} = {}", what,
                                                                          value, by_name, by)));
    }
  };
  check_divides(m.num_attention_heads, plan.tp, "num_attention_heads", "tp");
  check_divides(m.num_query_groups, plan.tp, "num_query_groups", "tp");
  check_divides(m.ffn_hidden_size, plan.tp, "ffn_hidden_size", "tp");
  check_divides(m.vocab_size, plan.tp, "vocab_size", "tp");
  check_divides(plan.global_batch_size, plan.micro_batch_size * plan.dp, "global_batch_size", "micro_batch_size*dp");
  if (plan.sequence_parallel) {
    check_divides(m.seq_length * plan.micro_batch_size, plan.tp, "seq_length*micro_batch_size", "tp");
  }
  if (plan.vp > 1) {
    check_divides(plan.num_microbatches(), plan.pp, "micro-batches per step", "pp (interleaved schedule)");
  }
  // --- ZeRO / FSDP --- the per-unit gathers and reduce-scatters exist only in the lowered TaskGraph.
  if (plan.get_zero_stage() >= 2 && options.program_source == ProgramSource::Internal) {
    throw InputError(input_message("command line", "program",
                                   fmt::format("zero stage {} needs the program lowered from the TaskGraph (the "
                                               "internal schedules have no ZeRO-2/3 collectives)",
                                               plan.get_zero_stage())));
  }
}

} // namespace

struct Trainer::State {
  RunOptions options;
  Communicator& world;
  model::RankGrid grid;
  ProcessGroups groups;
  GptModel model;
  TokenSource data;
  Program program;
  std::vector<Program> all_programs; // rank 0 only: labels for gathered timelines
  std::vector<Bucket> buckets;
  std::map<std::pair<int, int>, MicroState> micro;
  std::vector<PendingSend> sends;
  std::vector<model::TimelineEvent> events; // this rank, last step
  std::vector<int> event_instr;             // instruction index of each event
  std::vector<double> event_cpu_s;          // thread CPU time of each event
  int step = 0;
  int fault_fired_step = 0; // the step whose fault was injected (once per step)
  double loss_sum = 0.0;
  double grad_norm = 0.0; // global gradient norm of the last optimizer step (clip_scale)
  std::atomic<int> current_instr{-1};
  std::unique_ptr<Watchdog> watchdog;
  // --- ZeRO / FSDP --- ZeRO-2/3 with dp > 1: sharded grads and optimizer state (and ZeRO-3 parameters).
  std::unique_ptr<ZeroShards> zero;
  // --- mixture of experts --- in-flight expert-DP gradient reductions, by local chunk
  std::map<int, std::unique_ptr<Request>> expert_syncs;

  State(const RunOptions& opts, Communicator& w)
      : options(with_world_size(opts, w.size())), world(w),
        grid(opts.plan.tp, opts.plan.cp, opts.plan.dp, opts.plan.pp),
        groups(make_process_groups(w, grid, head_stage(opts.plan), opts.plan.ep)),
        model(opts.model, opts.plan, groups.coord.tp_rank, groups.coord.pp_rank, opts.seed, true,
              groups.coord.dp_rank % opts.plan.ep),
        data(opts.model.vocab_size, opts.model.seq_length, opts.seed, opts.data_file) {
    model.set_context_parallel(groups.cp.get(), groups.coord.cp_rank);
    model.set_expert_parallel(groups.ep.get()); // --- mixture of experts ---
  }

  [[nodiscard]] int microbatches() const { return static_cast<int>(options.plan.num_microbatches()); }

  std::string current_label() const {
    const int idx = current_instr.load();
    return idx >= 0 && idx < static_cast<int>(program.instrs.size()) ? program.instrs[static_cast<std::size_t>(idx)].label
                                                                     : std::string("(between tasks)");
  }

  [[noreturn]] void fail(const std::string& what) {
    const std::string message = fmt::format("rank {}: step {}: task {}: {}", world.rank(), step, current_label(), what);
    if (options.abort_on_error && world.size() > 1) {
      std::fprintf(stderr, "%s\n", message.c_str());
      std::fflush(stderr);
      world.abort(1);
    }
    throw RunError(message);
  }

  /// Programs of `ranks` (this rank's, or every rank's for trace labels), from the IR or the internal schedules.
  std::vector<Program> build_programs(const std::vector<int>& ranks) const {
    return build_rank_programs(options, ranks);
  }

  void setup_buckets();
  void execute(const Instr& instr);
  MicroState& state(int chunk, int mb) { return micro[{chunk, mb}]; }
  MicroBatch& batch(MicroState& st, int mb) {
    if (!st.has_data) {
      const int global_mb = groups.coord.dp_rank * microbatches() + mb;
      st.data = data.microbatch(step, global_mb, options.plan.micro_batch_size);
      if (options.plan.cp > 1) {
        st.data = cp_rows(st.data);
      }
      st.has_data = true;
    }
    return st.data;
  }
  // --- context parallelism --- this CP rank's rows of a micro-batch: its two sequence chunks ([s, b] order).
  [[nodiscard]] MicroBatch cp_rows(const MicroBatch& whole) const {
    return select_positions(whole, model.cp_positions(), options.plan.micro_batch_size);
  }
  void wait_sends();
  // --- mixture of experts ---
  /// Starts summing local chunk `chunk`'s routed-expert gradients over the expert-DP group (nothing to do in a
  /// group of one); wait_expert_syncs(chunk) completes it, wait_expert_syncs(-1) every one still in flight.
  void start_expert_sync(int chunk) {
    const auto [begin, end] = model.expert_param_range(chunk);
    CUBOID_ASSERT(!expert_syncs.contains(chunk), "expert gradients of chunk {} reduced twice in one step", chunk);
    if (end > begin && groups.expert_dp->size() > 1) {
      expert_syncs[chunk] = groups.expert_dp->all_reduce_async(model.params().grads().subspan(begin, end - begin));
    }
  }
  void wait_expert_syncs(int chunk) {
    for (auto it = expert_syncs.begin(); it != expert_syncs.end();) {
      if (chunk >= 0 && it->first != chunk) {
        ++it;
        continue;
      }
      it->second->wait();
      it = expert_syncs.erase(it);
    }
  }
  void optimizer_step();
  void zero_optimizer_step();
  /// Global gradient L2 norm (Megatron's logged "grad norm"), stored in `grad_norm`, and the clipping factor
  /// min(1, max_norm / norm) (1 without clipping). The norm counts unique parameters: TP-replicated ones on tp_rank 0
  /// only, the tied copy not at all; `grad_of(idx)` is this rank's gradient of parameter idx (its DP piece when
  /// `sharded_over_dp`, then summed over DP too). Collective over the DP (if sharded), TP and PP groups.
  template <typename GradOf> float clip_scale(const GradOf& grad_of, bool sharded_over_dp) {
    ParamSet& params = model.params();
    double sumsq = 0.0;
    double expert_sumsq = 0.0; // --- mixture of experts --- each EP member holds other experts: summed over EP
    for (int idx = 0; idx < static_cast<int>(params.infos().size()); ++idx) {
      const ParamInfo& info = params.info(idx);
      if (!info.counts_in_grad_norm(groups.coord.tp_rank)) {
        continue;
      }
      for (const float g : grad_of(idx)) {
        (info.expert ? expert_sumsq : sumsq) += static_cast<double>(g) * static_cast<double>(g);
      }
    }
    float experts = static_cast<float>(expert_sumsq);
    groups.ep->all_reduce(std::span<float>(&experts, 1));
    float total = static_cast<float>(sumsq) + experts;
    if (sharded_over_dp) {
      groups.dp->all_reduce(std::span<float>(&total, 1)); // the pieces of one tensor are spread over DP
    }
    groups.tp->all_reduce(std::span<float>(&total, 1));
    groups.pp->all_reduce(std::span<float>(&total, 1));
    grad_norm = std::sqrt(static_cast<double>(total));
    return cpu::clip_grad_scale(total, options.optimizer);
  }
  /// Parameters a unit's forward/backward reads (the head also reads the tied word embedding of its stage).
  std::vector<int> unit_params(UnitKind unit, int layer) const {
    if (unit == UnitKind::Embedding) {
      return model.embedding_params();
    }
    if (unit == UnitKind::Layer) {
      return model.layer_params(layer);
    }
    std::vector<int> out = model.head_params();
    const int wte = model.params().find("embed.wte");
    if (options.model.tied_embeddings && wte >= 0 && std::find(out.begin(), out.end(), wte) == out.end()) {
      out.push_back(wte);
    }
    return out;
  }
};

// Bucket k covers the share bucket_weights[k] / sum of the flat gradient buffer (parameters are laid out in backward
// order). A bucket may only start once every gradient in it is final: its CollectiveStart is moved after the last
// backward of every unit owning a parameter in its range if the program placed it earlier.
void Trainer::State::setup_buckets() {
  const auto& weights = program.bucket_weights;
  if (weights.empty()) {
    return;
  }
  const std::size_t total = model.dense_param_elements(); // MoE: the routed experts (laid out last) sync apart
  double sum = 0.0;
  for (const double w : weights) {
    sum += w;
  }
  double acc = 0.0;
  std::size_t begin = 0;
  for (std::size_t k = 0; k < weights.size(); ++k) {
    acc += weights[k];
    const std::size_t end = k + 1 == weights.size() ? total
                                                    : std::min(total, static_cast<std::size_t>(std::llround(
                                                                          acc / sum * static_cast<double>(total))));
    buckets.push_back({begin, std::max(begin, end), nullptr});
    begin = std::max(begin, end);
  }
  // Last program position finishing each parameter's gradient.
  std::vector<int> finished_at(model.params().infos().size(), -1);
  const auto mark = [&](const std::vector<int>& params, int pos) {
    for (const int p : params) {
      finished_at[static_cast<std::size_t>(p)] = std::max(finished_at[static_cast<std::size_t>(p)], pos);
    }
  };
  for (int pos = 0; pos < static_cast<int>(program.instrs.size()); ++pos) {
    const Instr& instr = program.instrs[static_cast<std::size_t>(pos)];
    if (instr.kind != InstrKind::Backward && instr.kind != InstrKind::WeightGrad) {
      continue;
    }
    if (instr.unit == UnitKind::Layer) {
      mark(model.layer_params(instr.layer), pos);
    } else if (instr.unit == UnitKind::Embedding) {
      mark(model.embedding_params(), pos);
    } else {
      mark(model.head_params(), pos);
    }
  }
  for (std::size_t k = 0; k < buckets.size(); ++k) {
    int ready = -1;
    for (std::size_t p = 0; p < finished_at.size(); ++p) {
      const ParamInfo& info = model.params().info(static_cast<int>(p));
      if (info.offset < buckets[k].end && info.offset + info.size() > buckets[k].begin) {
        ready = std::max(ready, finished_at[p]);
      }
    }
    auto& instrs = program.instrs;
    const auto is_start = [&](const Instr& i) { return i.kind == InstrKind::CollectiveStart && i.bucket == static_cast<int>(k); };
    const auto it = std::find_if(instrs.begin(), instrs.end(), is_start);
    if (it == instrs.end() || static_cast<int>(it - instrs.begin()) > ready) {
      continue;
    }
    const Instr start = *it;
    instrs.erase(it);
    instrs.insert(instrs.begin() + ready, start); // ready shifted down by one by the erase: lands right after it
    const auto start_pos = std::find_if(instrs.begin(), instrs.end(), is_start);
    const auto wait = std::find_if(instrs.begin(), instrs.end(), [&](const Instr& i) {
      return i.kind == InstrKind::CollectiveWait && i.bucket == static_cast<int>(k);
    });
    if (wait != instrs.end() && wait < start_pos) {
      const Instr moved = *wait;
      instrs.erase(wait);
      instrs.insert(std::find_if(instrs.begin(), instrs.end(), is_start) + 1, moved);
    }
  }
}

// Test-only faults (RunOptions::fault_kind). NanLoss only marks the step: the caller poisons the activation.
void inject_fault(FaultKind kind, int world_rank, int step) {
  switch (kind) {
  case FaultKind::Throw: throw std::runtime_error("injected fault (--inject-fault-rank/--inject-fault-step)");
  case FaultKind::NanLoss: return;
  case FaultKind::Hang:
    for (;;) {
      std::this_thread::sleep_for(std::chrono::seconds(1)); // until the watchdog (or mpirun) ends the job
    }
  case FaultKind::Crash:
    std::fprintf(stderr, "rank %d: step %d: injected crash (SIGKILL)\n", world_rank, step);
    std::fflush(stderr);
    std::raise(SIGKILL);
    return;
  }
}

void Trainer::State::wait_sends() {
  for (auto& send : sends) {
    send.request->wait();
  }
  sends.clear();
}

void Trainer::State::execute(const Instr& instr) {
  Communicator& tp = *groups.tp;
  const bool keep_all = options.plan.recompute != model::Recompute::Full;
  const auto rows = model.activation_rows();
  const auto cols = model.hidden();
  switch (instr.kind) {
  case InstrKind::Forward: {
    const bool poison = step == options.fault_step && world.rank() == options.fault_rank && fault_fired_step != step;
    if (poison) {
      fault_fired_step = step;
      inject_fault(options.fault_kind, world.rank(), step);
    }
    MicroState& st = state(instr.chunk, instr.microbatch);
    if (instr.unit == UnitKind::Embedding) {
      model.embedding_forward(tp, batch(st, instr.microbatch).inputs, st.act);
    } else if (instr.unit == UnitKind::Layer) {
      Mat out;
      model.layer_forward(tp, instr.layer, st.act, out, st.layers[instr.layer], keep_all);
      st.act = std::move(out);
    } else {
      double loss = model.head_forward(tp, st.act, batch(st, instr.microbatch).targets, st.head);
      if (poison) {
        loss = std::numeric_limits<double>::quiet_NaN();
      }
      // A NaN or infinite loss ends the job here, naming this rank, step and task (Trainer::State::fail).
      if (!std::isfinite(loss)) {
        throw std::runtime_error(fmt::format("loss is {} on micro-batch {}: stopping the run (diverged or bad input: "
                                             "check the learning rate and the data)",
                                             loss, instr.microbatch));
      }
      loss_sum += loss;
    }
    if (poison && instr.unit != UnitKind::Head) {
      st.act.setConstant(std::numeric_limits<float>::quiet_NaN());
    }
    if (zero && zero->shards_params()) {
      zero->release(unit_params(instr.unit, instr.layer)); // FSDP reshard after forward
    }
    return;
  }
  case InstrKind::Backward: {
    MicroState& st = state(instr.chunk, instr.microbatch);
    // Zero-bubble: B computes the input gradient only and queues the weight gradients for its W.
    const bool split = model::splits_backward(options.plan.schedule);
    if (instr.unit == UnitKind::Embedding) {
      model.embedding_backward(tp, batch(st, instr.microbatch).inputs, st.grad);
    } else if (instr.unit == UnitKind::Layer) {
      Mat dx;
      model.layer_backward(tp, instr.layer, st.layers[instr.layer], st.grad, dx,
                           split ? &st.pending_w[instr.layer] : nullptr);
      st.layers.erase(instr.layer);
      st.grad = std::move(dx);
    } else {
      // Each CP rank's loss is the mean over its T/cp tokens: the step loss averages over dp*cp such means.
      const float scale = 1.0f / static_cast<float>(microbatches() * options.plan.dp * options.plan.cp);
      model.head_backward(tp, st.head, batch(st, instr.microbatch).targets, scale, st.grad,
                          split ? &st.pending_w[-1] : nullptr);
    }
    if (zero) {
      const std::vector<int> used = unit_params(instr.unit, instr.layer);
      zero->mark_dirty(used);
      if (zero->shards_params()) {
        zero->release(used);
      }
    }
    return;
  }
  // --- zero-bubble schedules ---
  case InstrKind::WeightGrad: {
    MicroState& st = state(instr.chunk, instr.microbatch);
    if (instr.unit == UnitKind::Embedding) {
      // The embedding backward is all weight gradient; st.grad still holds the first layer's input gradient.
      model.embedding_backward(tp, batch(st, instr.microbatch).inputs, st.grad);
      return;
    }
    const int key = instr.unit == UnitKind::Layer ? instr.layer : -1;
    const auto found = st.pending_w.find(key);
    CUBOID_ASSERT(found != st.pending_w.end(), "{}: no deferred weight gradient (its B did not run)", instr.label);
    model.apply_weight_grads(found->second);
    st.pending_w.erase(found);
    return;
  }
  case InstrKind::LocalMove:
    local_move(instr, state(instr.chunk, instr.microbatch), state(instr.peer, instr.microbatch));
    return;
  case InstrKind::Send: {
    MicroState& st = state(instr.chunk, instr.microbatch);
    auto buffer = std::make_unique<Mat>(std::move(instr.direction == Direction::Forward ? st.act : st.grad));
    CUBOID_ASSERT(buffer->rows() == rows && buffer->cols() == cols, "{}: nothing to send ({} x {})", instr.label,
                  buffer->rows(), buffer->cols());
    auto request = world.send(std::span<const float>(buffer->data(), static_cast<std::size_t>(buffer->size())),
                              instr.peer, instr.tag);
    sends.push_back({instr.chunk, instr.microbatch, std::move(buffer), std::move(request)});
    return;
  }
  case InstrKind::Recv: {
    MicroState& st = state(instr.chunk, instr.microbatch);
    Mat& target = instr.direction == Direction::Forward ? st.act : st.grad;
    target.resize(rows, cols);
    world.recv(std::span<float>(target.data(), static_cast<std::size_t>(target.size())), instr.peer, instr.tag);
    return;
  }
  case InstrKind::CollectiveStart: {
    if (instr.expert_chunk >= 0) { // --- mixture of experts ---
      start_expert_sync(instr.expert_chunk);
      return;
    }
    if (instr.zero == ZeroOp::GatherParams) {
      CUBOID_ASSERT(zero && zero->shards_params(), "{}: parameter gather without ZeRO-3 state", instr.label);
      zero->gather(*groups.dp, unit_params(instr.unit, instr.layer));
      return;
    }
    if (instr.zero == ZeroOp::ScatterGrads) {
      CUBOID_ASSERT(zero != nullptr, "{}: gradient reduce-scatter without ZeRO state", instr.label);
      zero->scatter_dirty(*groups.dp);
      return;
    }
    if (instr.bucket < 0) {
      return; // distributed optimizer's parameter all-gather: replicas are already complete
    }
    Bucket& bucket = buckets.at(static_cast<std::size_t>(instr.bucket));
    bucket.request = groups.dp->all_reduce_async(model.params().grads().subspan(bucket.begin, bucket.end - bucket.begin));
    return;
  }
  case InstrKind::CollectiveWait: {
    if (instr.expert_chunk >= 0) { // --- mixture of experts ---
      wait_expert_syncs(instr.expert_chunk);
      return;
    }
    if (instr.bucket < 0) {
      return;
    }
    Bucket& bucket = buckets.at(static_cast<std::size_t>(instr.bucket));
    if (bucket.request) {
      bucket.request->wait();
      bucket.request.reset();
    }
    return;
  }
  case InstrKind::OptimizerStep: optimizer_step(); return;
  case InstrKind::Free:
    // Never wait for our sends here: a rendezvous-size Isend completes only when the peer posts its receive, which
    // the schedule may place after something the peer needs from us. Send buffers live until the end of the step.
    micro.erase({instr.chunk, instr.microbatch});
    return;
  }
}

void Trainer::State::optimizer_step() {
  if (zero) {
    zero_optimizer_step();
    return;
  }
  for (auto& bucket : buckets) {
    if (bucket.request) {
      bucket.request->wait();
      bucket.request.reset();
    }
  }
  wait_expert_syncs(-1);
  ParamSet& params = model.params();
  // Tied word embedding split over the first and last stage: sum the two partial gradients (Megatron's embedding
  // group all-reduce); both copies then take identical updates.
  const int wte = params.find("embed.wte");
  if (options.model.tied_embeddings && wte >= 0 && groups.embedding->size() > 1) {
    groups.embedding->all_reduce(std::span<float>(params.grad(wte), params.info(wte).size()));
  }
  // Under sequence parallelism, replicated parameters saw only this rank's share of the sequence.
  for (int idx = 0; idx < static_cast<int>(params.infos().size()); ++idx) {
    if (params.info(idx).sequence_parallel_grad) {
      groups.tp->all_reduce(std::span<float>(params.grad(idx), params.info(idx).size()));
    }
  }
  const cpu::AdamWConfig& config = options.optimizer;
  const float grad_scale =
      clip_scale([&](int idx) { return std::span<const float>(params.grad(idx), params.info(idx).size()); }, false);
  for (int idx = 0; idx < static_cast<int>(params.infos().size()); ++idx) {
    const ParamInfo& info = params.info(idx);
    const auto range = [&](std::span<float> all) { return all.subspan(info.offset, info.size()); };
    cpu::adamw_update(range(params.values()), range(params.grads()), range(params.moment1()), range(params.moment2()),
                      step, config, info.weight_decay ? config.weight_decay : 0.0f, grad_scale);
  }
}

// --- ZeRO / FSDP ---
// ZeRO-2/3: the same reductions as optimizer_step() (any gradient still unreduced, the tied-embedding group, the
// sequence-parallel norms, clipping) on this rank's gradient pieces, AdamW on its pieces only, then ZeRO-2
// all-gathers the updated pieces (its parameters are replicated) and ZeRO-3 leaves them sharded.
void Trainer::State::zero_optimizer_step() {
  zero->scatter_dirty(*groups.dp);
  ParamSet& params = model.params();
  const int wte = params.find("embed.wte");
  if (options.model.tied_embeddings && wte >= 0 && groups.embedding->size() > 1) {
    groups.embedding->all_reduce(zero->grads(wte));
  }
  for (int idx = 0; idx < static_cast<int>(params.infos().size()); ++idx) {
    if (params.info(idx).sequence_parallel_grad) {
      groups.tp->all_reduce(zero->grads(idx));
    }
  }
  const cpu::AdamWConfig& config = options.optimizer;
  const float grad_scale = clip_scale([&](int idx) { return std::span<const float>(zero->grads(idx)); }, true);
  for (int idx = 0; idx < static_cast<int>(params.infos().size()); ++idx) {
    const ParamInfo& info = params.info(idx);
    cpu::adamw_update(zero->values(idx), zero->grads(idx), zero->moment1(idx), zero->moment2(idx), step, config,
                      info.weight_decay ? config.weight_decay : 0.0f, grad_scale);
  }
  if (!zero->shards_params()) {
    zero->gather_all(*groups.dp);
  }
}

Trainer::Trainer(const RunOptions& options, Communicator& world) {
  validate_options(options, world);
  state_ = std::make_unique<State>(options, world);
  State& s = *state_;
  if (world.rank() == 0 && options.trace) {
    std::vector<int> ranks(static_cast<std::size_t>(world.size()));
    std::iota(ranks.begin(), ranks.end(), 0);
    s.all_programs = s.build_programs(ranks);
    s.program = s.all_programs.front();
  } else {
    s.program = std::move(s.build_programs({world.rank()}).front());
  }
  s.setup_buckets();
  if (options.plan.get_zero_stage() >= 2 && options.plan.dp > 1) {
    s.zero = std::make_unique<ZeroShards>(s.model.params(), options.plan.dp, s.groups.coord.dp_rank,
                                          options.plan.get_zero_stage() >= 3);
  }
  if (options.timeout_s > 0.0) {
    s.watchdog = std::make_unique<Watchdog>(
        options.timeout_s, [&s] { return s.current_label(); },
        [&s](const std::string& message) {
          std::fprintf(stderr, "rank %d: %s\n", s.world.rank(), message.c_str());
          std::fflush(stderr);
          s.world.abort(1);
        });
  }
}

Trainer::~Trainer() = default;

const Program& Trainer::program() const { return state_->program; }
double Trainer::min_router_margin() const { return state_->model.min_router_margin(); }

std::uint64_t Trainer::gather_routing_fingerprint() {
  // Two exact 32-bit halves per rank (doubles hold integers < 2^53 exactly), summed with wrap-around on rank 0.
  constexpr std::uint64_t HALF = std::uint64_t{1} << 32U;
  const std::uint64_t mine = state_->model.routing_fingerprint();
  const std::vector<double> halves{static_cast<double>(mine >> 32U), static_cast<double>(mine % HALF)};
  std::uint64_t sum = 0;
  for (const std::vector<double>& rank : gather_doubles(state_->world, halves)) {
    sum += (static_cast<std::uint64_t>(rank.at(0)) << 32U) + static_cast<std::uint64_t>(rank.at(1));
  }
  return sum;
}
int Trainer::steps_done() const { return state_->step; }
double Trainer::last_grad_norm() const { return state_->grad_norm; }

double Trainer::step() {
  State& s = *state_;
  ++s.step;
  s.loss_sum = 0.0;
  s.micro.clear();
  s.events.clear();
  s.event_instr.clear();
  s.event_cpu_s.clear();
  s.model.params().zero_grads();
  if (s.zero) {
    s.zero->zero_grads();
  }
  if (s.watchdog) {
    s.watchdog->arm(s.step);
  }
  const Clock::time_point start = Clock::now();
  const int world_rank = s.world.rank();
  try {
    for (int idx = 0; idx < static_cast<int>(s.program.instrs.size()); ++idx) {
      const Instr& instr = s.program.instrs[static_cast<std::size_t>(idx)];
      s.current_instr.store(idx);
      const double t0 = seconds_since(start);
      const double cpu0 = s.options.trace ? thread_cpu_time_s() : 0.0;
      s.execute(instr);
      if (s.options.trace && instr.kind != InstrKind::Free) {
        s.events.push_back({instr.task == NO_TASK ? static_cast<model::TaskId>(idx) : instr.task, world_rank,
                            instr.stream, t0, seconds_since(start), instr.label, category_of(instr.kind)});
        s.event_instr.push_back(idx);
        s.event_cpu_s.push_back(thread_cpu_time_s() - cpu0);
      }
    }
    s.current_instr.store(-1);
    s.wait_sends();
  } catch (const std::exception& e) {
    s.fail(e.what());
  }
  // Loss of the step: the last stage's tp_rank 0 ranks hold their replica's micro-batch losses.
  const bool reports_loss = s.groups.coord.pp_rank == head_stage(s.options.plan) && s.groups.coord.tp_rank == 0;
  // With context parallelism each CP rank reports the mean over its chunks (equal sizes): average the cp of them.
  float loss = reports_loss ? static_cast<float>(s.loss_sum / static_cast<double>(s.microbatches() * s.options.plan.dp *
                                                                                 s.options.plan.cp))
                            : 0.0f;
  s.world.all_reduce(std::span<float>(&loss, 1));
  if (s.watchdog) {
    s.watchdog->disarm();
  }
  return static_cast<double>(loss);
}

namespace {
// One measured instruction as doubles: the fields that identify it, then its thread CPU time, start and end.
constexpr std::size_t EVENT_FIELDS = 12;

void pack_event(const Instr& instr, double cpu_s, double start_s, double end_s, std::vector<double>& out) {
  out.insert(out.end(), {instr.task == NO_TASK ? -1.0 : static_cast<double>(instr.task),
                         static_cast<double>(instr.stream), static_cast<double>(instr.kind),
                         static_cast<double>(instr.unit), static_cast<double>(instr.layer),
                         static_cast<double>(instr.chunk), static_cast<double>(instr.microbatch),
                         static_cast<double>(instr.direction), static_cast<double>(instr.peer), cpu_s, start_s,
                         end_s});
}

Instr unpack_instr(const double* f) {
  Instr instr;
  instr.task = f[0] < 0.0 ? NO_TASK : static_cast<model::TaskId>(f[0]);
  instr.stream = static_cast<model::Stream>(static_cast<int>(f[1]));
  instr.kind = static_cast<InstrKind>(static_cast<int>(f[2]));
  instr.unit = static_cast<UnitKind>(static_cast<int>(f[3]));
  instr.layer = static_cast<int>(f[4]);
  instr.chunk = static_cast<int>(f[5]);
  instr.microbatch = static_cast<int>(f[6]);
  instr.direction = static_cast<Direction>(static_cast<int>(f[7]));
  instr.peer = static_cast<int>(f[8]);
  return instr;
}
} // namespace

std::vector<model::TimelineEvent> Trainer::gather_timeline(std::vector<double>* cpu_s) {
  State& s = *state_;
  std::vector<double> packed;
  for (std::size_t e = 0; e < s.events.size(); ++e) {
    pack_event(s.program.instrs[static_cast<std::size_t>(s.event_instr[e])], s.event_cpu_s[e], s.events[e].start_s,
               s.events[e].end_s, packed);
  }
  if (cpu_s != nullptr) {
    cpu_s->clear();
  }
  const auto all = gather_doubles(s.world, packed);
  std::vector<model::TimelineEvent> out;
  for (std::size_t rank = 0; rank < all.size(); ++rank) {
    // IR labels of this rank's tasks (the program may have been reordered by bucket placement, labels not).
    std::map<model::TaskId, std::string> labels;
    if (rank < s.all_programs.size()) {
      for (const Instr& instr : s.all_programs[rank].instrs) {
        if (instr.task != NO_TASK) {
          labels.emplace(instr.task, instr.label);
        }
      }
    }
    // Instructions of one IR task (CollectiveStart..Wait, or embedding + layer of a fused block) become one event
    // spanning from the first start to the last end.
    std::map<model::TaskId, std::size_t> by_task;
    const std::vector<double>& data = all[rank];
    for (std::size_t e = 0; e + EVENT_FIELDS <= data.size(); e += EVENT_FIELDS) {
      const Instr instr = unpack_instr(&data[e]);
      const double task_cpu_s = data[e + EVENT_FIELDS - 3];
      const double start_s = data[e + EVENT_FIELDS - 2];
      const double end_s = data[e + EVENT_FIELDS - 1];
      const auto event_index = static_cast<model::TaskId>(e / EVENT_FIELDS);
      if (instr.task != NO_TASK) {
        const auto [it, inserted] = by_task.emplace(instr.task, out.size());
        if (!inserted) {
          model::TimelineEvent& merged = out[it->second];
          merged.start_s = std::min(merged.start_s, start_s);
          merged.end_s = std::max(merged.end_s, end_s);
          if (cpu_s != nullptr) {
            (*cpu_s)[it->second] += task_cpu_s;
          }
          continue;
        }
      }
      const auto label = labels.find(instr.task);
      out.push_back({instr.task == NO_TASK ? event_index : instr.task, static_cast<int>(rank), instr.stream, start_s,
                     end_s, label != labels.end() ? label->second : describe(instr), category_of(instr.kind)});
      if (cpu_s != nullptr) {
        cpu_s->push_back(task_cpu_s);
      }
    }
  }
  return out;
}

std::vector<float> Trainer::gather_full_weights() {
  State& s = *state_;
  const model::Plan& plan = s.options.plan;
  const std::vector<ParamInfo> canonical = canonical_params(s.options.model);
  // Stage holding each canonical parameter.
  std::map<std::string, int> stage_of;
  std::map<std::string, int> ep_rank_of; // --- mixture of experts --- routed experts: the EP member holding them
  for (int stage = 0; stage < plan.pp; ++stage) {
    for (int ep_rank = 0; ep_rank < plan.ep; ++ep_rank) {
      const GptModel layout(s.options.model, plan, 0, stage, 0, false, ep_rank);
      for (const auto& info : layout.params().infos()) {
        if (!info.embedding_copy) {
          stage_of.emplace(info.name, stage);
        }
        if (info.expert) {
          ep_rank_of.emplace(info.name, ep_rank);
        }
      }
    }
  }
  ParamSet& params = s.model.params();
  if (s.zero && s.zero->shards_params()) {
    s.zero->gather_all(*s.groups.dp); // ZeRO-3: assemble the pieces (every DP member takes part), poisoned after
  }
  std::vector<float> full;
  std::size_t total = 0;
  for (const auto& p : canonical) {
    total += p.size();
  }
  if (s.world.rank() == 0) {
    full.resize(total);
  }
  std::size_t offset = 0;
  for (std::size_t tag = 0; tag < canonical.size(); ++tag) {
    const ParamInfo& p = canonical[tag];
    const int stage = stage_of.at(p.name);
    const int shards = p.split == TpSplit::Replicated ? 1 : plan.tp;
    for (int tp_rank = 0; tp_rank < shards; ++tp_rank) {
      // Routed experts come from the EP member of the first EP group holding them (dp_rank = ep_rank there).
      const auto owner = ep_rank_of.find(p.name);
      const int source = s.grid.rank_of({tp_rank, owner == ep_rank_of.end() ? 0 : owner->second, stage});
      const std::int64_t rows = p.split == TpSplit::Rows ? p.full_rows / plan.tp : p.full_rows;
      const std::int64_t cols = p.split == TpSplit::Columns ? p.full_cols / plan.tp : p.full_cols;
      std::vector<float> shard(static_cast<std::size_t>(rows * cols));
      if (s.world.rank() == source) {
        const int idx = params.find(p.name);
        CUBOID_ASSERT(idx >= 0, "rank {} should hold {}", source, p.name);
        std::copy(params.value(idx), params.value(idx) + shard.size(), shard.begin());
        if (source != 0) {
          s.world.send(shard, 0, static_cast<int>(tag))->wait();
        }
      }
      if (s.world.rank() == 0) {
        if (source != 0) {
          s.world.recv(shard, source, static_cast<int>(tag));
        }
        const std::int64_t row0 = p.split == TpSplit::Rows ? rows * tp_rank : 0;
        const std::int64_t col0 = p.split == TpSplit::Columns ? cols * tp_rank : 0;
        for (std::int64_t r = 0; r < rows; ++r) {
          for (std::int64_t c = 0; c < cols; ++c) {
            full[offset + static_cast<std::size_t>((row0 + r) * p.full_cols + col0 + c)] =
                shard[static_cast<std::size_t>(r * cols + c)];
          }
        }
      }
    }
    offset += p.size();
  }
  if (s.zero && s.zero->shards_params()) {
    s.zero->reshard_all();
  }
  return full;
}

namespace {
double process_cpu_time_s() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

// Median over the steps after the first (the first step pays for first-touch allocations), or the only step.
double median_after_first(const std::vector<double>& values) {
  std::vector<double> tail(values.begin() + (values.size() > 1 ? 1 : 0), values.end());
  std::sort(tail.begin(), tail.end());
  return tail.size() % 2 == 1 ? tail[tail.size() / 2] : 0.5 * (tail[tail.size() / 2 - 1] + tail[tail.size() / 2]);
}
} // namespace

RunResult run_training(const RunOptions& options, Communicator& world) {
  Trainer trainer(options, world);
  RunResult result;
  for (int step = 0; step < options.steps; ++step) {
    const Clock::time_point start = Clock::now();
    const double cpu_start_s = process_cpu_time_s();
    result.losses.push_back(trainer.step());
    result.step_time_s.push_back(seconds_since(start));
    result.grad_norms.push_back(trainer.last_grad_norm());
    result.step_cpu_time_s.push_back(process_cpu_time_s() - cpu_start_s);
  }
  result.median_step_time_s = median_after_first(result.step_time_s);
  result.median_step_cpu_time_s = median_after_first(result.step_cpu_time_s);
  if (options.trace) {
    result.timeline = trainer.gather_timeline(&result.timeline_cpu_s);
  }
  return result;
}

std::vector<float> gather_full_weights(Trainer& trainer) { return trainer.gather_full_weights(); }

void validate_run_options(const RunOptions& options, const Communicator& world) { validate_options(options, world); }

// --- context parallelism --- (the runtimes split the sequence, not the SP shards: one or the other)
void validate_context_parallel_run(const model::Plan& plan) {
  if (plan.cp > 1 && plan.sequence_parallel) {
    throw InputError(input_message("command line", "--cp",
                                   fmt::format("{} with --sequence-parallel: cuboid run executes context parallelism "
                                               "without sequence parallelism (valid: drop --sequence-parallel, or "
                                               "--cp 1)",
                                               plan.cp)));
  }
  if (plan.cp > 1 && plan.cp_comm_type == model::CpCommType::P2P) {
    throw InputError(input_message("command line", "--cp-comm-type",
                                   "p2p: cuboid run does not execute the ring (valid: allgather, the default of "
                                   "cuboid run, or a2a; `cuboid simulate` predicts p2p)"));
  }
}

// --- mixture of experts ---
void validate_moe_run(const model::ModelSpec& model, const model::Plan& plan, ProgramSource program_source) {
  if (!model.is_moe()) {
    return;
  }
  constexpr const char* WHERE = "command line";
  if (model.num_shared_experts > 0) {
    throw InputError(input_message(WHERE, "--model",
                                   fmt::format("{} has num_shared_experts = {}: cuboid run executes routed experts "
                                               "only (valid: a MoE model with num_shared_experts = 0, e.g. "
                                               "--model gpt-tiny --num-experts 4 --top-k 2)",
                                               model.name, model.num_shared_experts)));
  }
  if (plan.tp > 1) {
    throw InputError(input_message(WHERE, "--tp",
                                   fmt::format("{} with the mixture-of-experts model {}: cuboid run executes MoE "
                                               "models without tensor parallelism (valid: --tp 1, with any --dp, "
                                               "--ep, --pp)",
                                               plan.tp, model.name)));
  }
  if (program_source == ProgramSource::Internal) {
    throw InputError(input_message(WHERE, "program",
                                   fmt::format("internal with the mixture-of-experts model {}: the expert-DP "
                                               "gradient reductions exist only in the lowered TaskGraph (valid: the "
                                               "TaskGraph program)",
                                               model.name)));
  }
}

std::vector<Program> build_rank_programs(const RunOptions& options, const std::vector<int>& ranks) {
  std::vector<Program> out;
  if (options.program_source == ProgramSource::Internal) {
    for (const int rank : ranks) {
      out.push_back(build_internal_program(options.model, options.plan, rank));
    }
    return out;
  }
  const model::TaskGraph graph =
      model::build_step_graph(options.model, options.cluster, options.plan, model::Instantiation::AllRanks);
  for (const int rank : ranks) {
    out.push_back(lower_to_program(graph, rank));
  }
  return out;
}

} // namespace cuboid::exec
