// CUDA training runtime (see cuda_runtime.hpp). Mirrors exec/runtime.cpp's Trainer::State instruction by
// instruction; the differences are where the data lives (device buffers from the stream-ordered pool) and that
// nothing blocks the host until the end of the step (loss read-back and event collection).
#include "exec/cuda/cuda_runtime.hpp"

#include "exec/cuda/cuda_check.hpp"
#include "exec/cuda/cuda_layout.hpp"
#include "exec/cuda/cuda_model.hpp"
#include "exec/cuda/event_timeline.hpp"
#include "exec/cuda/launch_env.hpp"
#include "exec/cuda/nccl_communicator.hpp"
#include "exec/data.hpp"
#include "exec/device_error.hpp"
#include "exec/internal_schedule.hpp"
#include "exec/lowering.hpp"
#include "exec/process_groups.hpp"
#include "exec/watchdog.hpp"
#include "kernels/adamw.cuh"
#include "kernels/elementwise.cuh"
#include "model/errors.hpp"
#include "model/rank_grid.hpp"
#include "model/schedule.hpp"
#include "model/step_builder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <numeric>

namespace cuboid::exec::cuda {

namespace {

using Clock = std::chrono::steady_clock;
constexpr double RENDEZVOUS_TIMEOUT_S = 300.0;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string category_of(InstrKind kind) {
  switch (kind) {
  case InstrKind::Forward:
  case InstrKind::Backward: return "compute";
  case InstrKind::Send:
  case InstrKind::Recv: return "p2p";
  case InstrKind::CollectiveStart:
  case InstrKind::CollectiveWait: return "collective";
  case InstrKind::OptimizerStep: return "optimizer";
  case InstrKind::Free: return "memory";
  case InstrKind::WeightGrad: return "compute";
  case InstrKind::LocalMove: return "memory";
  }
  return "?";
}

double median_after_first(const std::vector<double>& values) {
  std::vector<double> tail(values.begin() + (values.size() > 1 ? 1 : 0), values.end());
  std::sort(tail.begin(), tail.end());
  return tail.size() % 2 == 1 ? tail[tail.size() / 2] : 0.5 * (tail[tail.size() / 2 - 1] + tail[tail.size() / 2]);
}

struct MicroState {
  Bf16Buffer act;
  Bf16Buffer grad;
  std::map<int, CudaLayerCache> layers;
  CudaHeadCache head;
  DeviceBuffer<std::int32_t> inputs;
  DeviceBuffer<std::int32_t> targets;
  bool has_data = false;
  std::map<int, CudaWeightGradWork> pending_w; // zero-bubble: deferred W per global layer (-1: the head)
};

struct PendingSend {
  Bf16Buffer buffer;
  std::unique_ptr<Request> request;
};

struct Bucket {
  BucketRange range;
  std::vector<std::unique_ptr<Request>> requests; // one all-reduce, or one reduce-scatter per shard segment
  std::vector<std::unique_ptr<Request>> gathers;  // --overlap-param-gather: the bf16 copy's all-gathers in flight
  static void wait(std::vector<std::unique_ptr<Request>>& pending) {
    for (auto& request : pending) {
      request->wait();
    }
    pending.clear();
  }
  void wait() { wait(requests); }
};

// The compute stream and the device memory pool of this process, created before any NCCL or model state.
struct DeviceSetup {
  cudaStream_t stream = nullptr;
  std::string name;
  DeviceSetup(const LaunchEnv& env) {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
      throw DeviceError(device_error_message(
          "cudaGetDeviceCount", env.rank, __FILE__, __LINE__,
          fmt::format("no usable CUDA device ({}); --backend cuda needs a GPU and its driver",
                      status != cudaSuccess ? cudaGetErrorString(status) : "0 devices")));
    }
    if (env.local_rank >= devices) {
      throw DeviceError(device_error_message("cudaSetDevice", env.rank, __FILE__, __LINE__,
                                             fmt::format("LOCAL_RANK {} but only {} device(s) visible",
                                                         env.local_rank, devices)));
    }
    CUDA_CHECK(cudaSetDevice(env.local_rank));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, env.local_rank));
    name = prop.name;
    cudaMemPool_t pool = nullptr;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, env.local_rank));
    std::uint64_t keep = std::numeric_limits<std::uint64_t>::max(); // never hand freed blocks back to the driver
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  ~DeviceSetup() {
    if (stream != nullptr) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
  }
  DeviceSetup(const DeviceSetup&) = delete;
  DeviceSetup& operator=(const DeviceSetup&) = delete;
};

// The pipeline stage holding the output layer: the last virtual stage's (zb-v: stage 0), as exec/runtime.cpp.
int head_stage_of(const model::Plan& plan) { return model::locate_virtual_stage(plan, plan.pp * plan.vp - 1).stage; }

cudaStream_t comm_stream_of(Communicator& comm, cudaStream_t fallback) {
  auto* nccl = dynamic_cast<NcclCommunicator*>(&comm);
  return nccl != nullptr ? nccl->comm_stream() : fallback;
}

class CudaTrainer {
public:
  CudaTrainer(const RunOptions& options, const LaunchEnv& env, DeviceSetup& device, Communicator& world)
      : options_(options), world_(world), stream_(device.stream),
        grid_(options.plan.tp, options.plan.cp, options.plan.dp, options.plan.pp),
        groups_(make_process_groups(world, grid_, head_stage_of(options.plan))),
        gemm_(options.cuda_gemm_autotune ? GemmAlgoSelection::Autotune : GemmAlgoSelection::Heuristic),
        workspace_(workspace_bytes(GemmArgs{}), device.stream),
        all_programs_(world.rank() == 0 && options.trace ? build_programs(all_ranks(world)) : std::vector<Program>{}),
        program_(all_programs_.empty() ? build_programs({world.rank()}).front() : all_programs_.front()),
        model_(options.model, options.plan, groups_.coord.tp_rank, groups_.coord.pp_rank, options.seed,
               CudaContext{device.stream, &gemm_, workspace_.get(), workspace_.size(), groups_.tp.get(),
                           options.cuda_tensor_core_attention, groups_.cp.get(), groups_.coord.cp_rank},
               // The gradient group: dp ranks, or dp*cp with context parallelism (Megatron shards the distributed
               // optimizer over it too).
               DpSharding{program_.bucket_weights, groups_.dp->size(), groups_.dp->rank(),
                          options.plan.get_zero_stage() >= 1, options.plan.get_zero_stage() >= 2,
                          options.plan.get_zero_stage() >= 3}),
        data_(options.model.vocab_size, options.model.seq_length, options.seed, options.data_file),
        loss_acc_(1, device.stream), norm_acc_(1, device.stream), timeline_(world.rank()) {
    (void)env;
    if (options.plan.pp > 1) {
      p2p_backward_ = world.split(0, world.rank());
    }
    setup_buckets();
    setup_zero2_scatters();
    if (options.timeout_s > 0.0) {
      watchdog_ = std::make_unique<Watchdog>(
          options.timeout_s, [this] { return current_label(); },
          [this](const std::string& message) {
            std::fprintf(stderr, "rank %d: %s\n", world_.rank(), message.c_str());
            std::fflush(stderr);
            if (world_.size() > 1) {
              world_.abort(1);
            }
            std::_Exit(1);
          });
    }
  }

  double step();
  [[nodiscard]] double last_grad_norm() const { return grad_norm_; }
  [[nodiscard]] std::string attention_kernel() const { return model_.attention_kernel(); }
  std::vector<model::TimelineEvent> gather_timeline();

private:
  [[nodiscard]] int microbatches() const { return static_cast<int>(options_.plan.num_microbatches()); }
  std::vector<Program> build_programs(const std::vector<int>& ranks) const {
    return build_rank_programs(options_, ranks);
  }
  static std::vector<int> all_ranks(const Communicator& world) {
    std::vector<int> ranks(static_cast<std::size_t>(world.size()));
    std::iota(ranks.begin(), ranks.end(), 0);
    return ranks;
  }
  std::string current_label() const {
    const int idx = current_instr_.load();
    if (idx == END_OF_STEP) {
      return "(end of step: the loss summed on the device, read back after the last task)";
    }
    return idx >= 0 && idx < static_cast<int>(program_.instrs.size())
               ? program_.instrs[static_cast<std::size_t>(idx)].label
               : std::string("(between tasks)");
  }
  static constexpr int END_OF_STEP = -2; // current_instr_ while the step's loss is reduced and read back
  void setup_buckets();
  MicroState& state(int chunk, int mb) { return micro_[{chunk, mb}]; }
  MicroState& with_data(int chunk, int mb) {
    MicroState& st = state(chunk, mb);
    if (!st.has_data) {
      const int global_mb = groups_.coord.dp_rank * microbatches() + mb;
      MicroBatch batch = data_.microbatch(step_, global_mb, options_.plan.micro_batch_size);
      if (options_.plan.cp > 1) { // this CP rank's rows: its two sequence chunks ([s, b] order, as exec/runtime.cpp)
        batch = select_positions(batch, model_.cp_positions(), options_.plan.micro_batch_size);
      }
      st.inputs.resize(batch.inputs.size(), stream_);
      st.targets.resize(batch.targets.size(), stream_);
      CUDA_CHECK(cudaMemcpyAsync(st.inputs.get(), batch.inputs.data(), batch.inputs.size() * sizeof(std::int32_t),
                                 cudaMemcpyHostToDevice, stream_));
      CUDA_CHECK(cudaMemcpyAsync(st.targets.get(), batch.targets.data(),
                                 batch.targets.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice, stream_));
      // Pageable sources are staged before cudaMemcpyAsync returns, so `batch` may die here without a sync.
      st.has_data = true;
    }
    return st;
  }
  void execute(const Instr& instr);
  /// The communicator of a pipeline send / receive. NCCL matches point-to-point operations between two ranks in
  /// issue order, ignoring tags, so each direction gets its own: a schedule may interleave forward and backward
  /// transfers to one peer in different orders on the two sides (zb-v with 4 micro-batches does), but within one
  /// direction both sides follow the micro-batches in order.
  [[nodiscard]] Communicator& p2p(const Instr& instr) {
    return instr.direction == Direction::Backward && p2p_backward_ ? *p2p_backward_ : world_;
  }
  void optimizer_step();
  void reduce_sequence_parallel_grads();
  /// Calls fn(begin, end, shard_pos) for each part of parameter idx that this DP rank owns: flat-buffer range
  /// [begin, end) and its position in the compact optimizer buffers.
  template <typename Fn> void for_each_owned(int idx, Fn&& fn) const;
  /// --overlap-param-gather: before a unit's forward, waits for the all-gathers of the buckets holding its
  /// parameters that are still in flight from the last optimizer step, and refreshes their fp32 replicas.
  void ensure_gathered(const Instr& instr);
  [[nodiscard]] std::vector<int> unit_params(const Instr& instr) const {
    const GptModel& host = model_.host_layout();
    return instr.unit == UnitKind::Layer       ? host.layer_params(instr.layer)
           : instr.unit == UnitKind::Embedding ? host.embedding_params()
                                               : host.head_params();
  }
  /// ZeRO-2: after which instruction each gradient bucket is reduce-scattered (setup_zero2_scatters).
  void setup_zero2_scatters();

  RunOptions options_;
  Communicator& world_;
  cudaStream_t stream_;
  model::RankGrid grid_;
  ProcessGroups groups_;
  GemmRunner gemm_;
  DeviceBuffer<std::uint8_t> workspace_;
  std::vector<Program> all_programs_; // every rank's, on rank 0 of a traced run (for the timeline's labels)
  Program program_;
  CudaGptModel model_;
  TokenSource data_;
  F32Buffer loss_acc_;
  F32Buffer norm_acc_;
  double grad_norm_ = 0.0; // global gradient norm of the last step, before clipping
  EventTimeline timeline_;
  std::vector<Bucket> buckets_;
  std::vector<char> stale_; // per parameter: its bf16 copy may still be in flight (--overlap-param-gather)
  std::vector<std::vector<std::size_t>> scatter_after_; // ZeRO-2: per instruction, the buckets to scatter after it
  std::map<std::pair<int, int>, MicroState> micro_;
  std::vector<PendingSend> sends_;
  std::vector<int> event_instr_; // instruction index of each timed event
  int step_ = 0;
  int fault_fired_step_ = 0; // the step whose test fault was injected (once per step)
  std::atomic<int> current_instr_{-1};
  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<Communicator> p2p_backward_; // pp > 1: a copy of the world for backward transfers (p2p())
};

// As exec/runtime.cpp setup_buckets, over the device layout: bucket k's CollectiveStart moves after the last backward
// that finishes a gradient in its range.
void CudaTrainer::setup_buckets() {
  // ZeRO-2/3 programs have no DP buckets of their own, but the model's gradient buckets still carry the parameter
  // all-gathers (--overlap-param-gather).
  for (const BucketRange& range : model_.buckets()) {
    buckets_.push_back({range, {}, {}});
  }
  const auto& weights = program_.bucket_weights;
  if (weights.empty()) {
    return;
  }
  const DeviceParamLayout& layout = model_.device_layout();
  const GptModel& host = model_.host_layout();
  std::vector<int> finished_at(model_.infos().size(), -1);
  const auto mark = [&](const std::vector<int>& params, int pos) {
    for (const int p : params) {
      finished_at[static_cast<std::size_t>(p)] = std::max(finished_at[static_cast<std::size_t>(p)], pos);
    }
  };
  for (int pos = 0; pos < static_cast<int>(program_.instrs.size()); ++pos) {
    const Instr& instr = program_.instrs[static_cast<std::size_t>(pos)];
    if (instr.kind != InstrKind::Backward && instr.kind != InstrKind::WeightGrad) { // zero-bubble: W finishes them
      continue;
    }
    if (instr.unit == UnitKind::Layer) {
      mark(host.layer_params(instr.layer), pos);
    } else if (instr.unit == UnitKind::Embedding) {
      mark(host.embedding_params(), pos);
    } else {
      mark(host.head_params(), pos);
    }
  }
  for (std::size_t kb = 0; kb < buckets_.size(); ++kb) {
    int ready = -1;
    for (std::size_t p = 0; p < finished_at.size(); ++p) {
      const std::size_t begin = layout.offsets[p];
      const std::size_t end = begin + model_.infos()[p].size();
      if (begin < buckets_[kb].range.end && end > buckets_[kb].range.begin) {
        ready = std::max(ready, finished_at[p]);
      }
    }
    auto& instrs = program_.instrs;
    const auto is_start = [&](const Instr& i) {
      return i.kind == InstrKind::CollectiveStart && i.bucket == static_cast<int>(kb);
    };
    const auto it = std::find_if(instrs.begin(), instrs.end(), is_start);
    if (it == instrs.end() || static_cast<int>(it - instrs.begin()) > ready) {
      continue;
    }
    const Instr start = *it;
    instrs.erase(it);
    instrs.insert(instrs.begin() + ready, start);
    const auto start_pos = std::find_if(instrs.begin(), instrs.end(), is_start);
    const auto wait = std::find_if(instrs.begin(), instrs.end(), [&](const Instr& i) {
      return i.kind == InstrKind::CollectiveWait && i.bucket == static_cast<int>(kb);
    });
    if (wait != instrs.end() && wait < start_pos) {
      const Instr moved = *wait;
      instrs.erase(wait);
      instrs.insert(std::find_if(instrs.begin(), instrs.end(), is_start) + 1, moved);
    }
  }
}

void CudaTrainer::execute(const Instr& instr) {
  const bool keep_all = options_.plan.recompute != model::Recompute::Full;
  const std::size_t act_elements = static_cast<std::size_t>(model_.activation_rows() * model_.hidden());
  // Each CP rank's loss is the mean over its T/cp tokens: the step loss averages over dp*cp such means.
  const float loss_scale = 1.0f / static_cast<float>(microbatches() * options_.plan.dp * options_.plan.cp);
  switch (instr.kind) {
  case InstrKind::Forward: {
    // Test-only fault injection, at the faulty rank's first forward of the faulty step (as exec/runtime.cpp).
    const bool poison = step_ == options_.fault_step && world_.rank() == options_.fault_rank && fault_fired_step_ != step_;
    if (poison) {
      fault_fired_step_ = step_;
      inject_fault(options_.fault_kind, world_.rank(), step_);
    }
    ensure_gathered(instr);
    if (instr.unit == UnitKind::Embedding) {
      MicroState& st = with_data(instr.chunk, instr.microbatch);
      model_.embedding_forward(st.inputs.get(), st.act);
    } else if (instr.unit == UnitKind::Layer) {
      MicroState& st = state(instr.chunk, instr.microbatch);
      Bf16Buffer out;
      model_.layer_forward(instr.layer, std::move(st.act), out, st.layers[instr.layer], keep_all);
      st.act = std::move(out);
    } else {
      MicroState& st = with_data(instr.chunk, instr.microbatch);
      const bool reports_loss = groups_.coord.tp_rank == 0;
      model_.head_forward(std::move(st.act), st.targets.get(), st.head, reports_loss ? loss_acc_.get() : nullptr,
                          loss_scale);
    }
    if (model_.shards_params()) {
      model_.release_params(unit_params(instr)); // FSDP's reshard after forward
    }
    if (poison) { // FaultKind::NanLoss (the other kinds did not return): all-ones bytes are NaN in bf16 and fp32
      MicroState& st = state(instr.chunk, instr.microbatch);
      if (instr.unit == UnitKind::Head) {
        CUDA_CHECK(cudaMemsetAsync(loss_acc_.get(), 0xFF, sizeof(float), stream_));
      } else {
        CUDA_CHECK(cudaMemsetAsync(st.act.get(), 0xFF, st.act.size() * sizeof(kernels::bf16), stream_));
      }
    }
    return;
  }
  case InstrKind::Backward: {
    // Zero-bubble: B computes the input gradient only and queues the weight gradients for its W (as the CPU).
    const bool split = model::splits_backward(options_.plan.schedule);
    if (instr.unit == UnitKind::Embedding) {
      if (!split) { // else all of it is weight gradient: its W runs it
        MicroState& st = with_data(instr.chunk, instr.microbatch);
        model_.embedding_backward(st.inputs.get(), st.grad);
      }
    } else if (instr.unit == UnitKind::Layer) {
      MicroState& st = state(instr.chunk, instr.microbatch);
      Bf16Buffer dx;
      model_.layer_backward(instr.layer, st.layers[instr.layer], std::move(st.grad), dx,
                            split ? &st.pending_w[instr.layer] : nullptr);
      st.layers.erase(instr.layer);
      st.grad = std::move(dx);
    } else {
      MicroState& st = with_data(instr.chunk, instr.microbatch);
      model_.head_backward(st.head, st.targets.get(), loss_scale, st.grad, split ? &st.pending_w[-1] : nullptr);
    }
    if (model_.shards_params()) {
      model_.release_params(unit_params(instr));
    }
    return;
  }
  // --- zero-bubble schedules ---
  case InstrKind::WeightGrad: {
    if (instr.unit == UnitKind::Embedding) {
      // st.grad still holds the first layer's input gradient.
      MicroState& st = with_data(instr.chunk, instr.microbatch);
      model_.embedding_backward(st.inputs.get(), st.grad);
      return;
    }
    MicroState& st = state(instr.chunk, instr.microbatch);
    const auto found = st.pending_w.find(instr.unit == UnitKind::Layer ? instr.layer : -1);
    CUBOID_ASSERT(found != st.pending_w.end(), "{}: no deferred weight gradient (its B did not run)", instr.label);
    model_.apply_weight_grads(found->second);
    st.pending_w.erase(found);
    return;
  }
  case InstrKind::LocalMove: // zb-v: the V's turn between this rank's two chunks
    local_move(instr, state(instr.chunk, instr.microbatch), state(instr.peer, instr.microbatch));
    return;
  case InstrKind::Send: {
    MicroState& st = state(instr.chunk, instr.microbatch);
    Bf16Buffer buffer = std::move(instr.direction == Direction::Forward ? st.act : st.grad);
    CUBOID_ASSERT(buffer.size() == act_elements && act_elements % 2 == 0, "{}: nothing to send ({} elements)",
                  instr.label, buffer.size());
    // bf16 pairs travel as 32-bit words (NCCL moves bytes; no arithmetic on them).
    auto request = p2p(instr).send(
        std::span<const float>(reinterpret_cast<const float*>(buffer.get()), buffer.size() / 2), instr.peer, instr.tag);
    sends_.push_back({std::move(buffer), std::move(request)});
    return;
  }
  case InstrKind::Recv: {
    MicroState& st = state(instr.chunk, instr.microbatch);
    Bf16Buffer& target = instr.direction == Direction::Forward ? st.act : st.grad;
    target.resize(act_elements, stream_);
    p2p(instr).recv(std::span<float>(reinterpret_cast<float*>(target.get()), act_elements / 2), instr.peer, instr.tag);
    return;
  }
  case InstrKind::CollectiveStart: {
    if (instr.zero == ZeroOp::ScatterGrads) { // ZeRO-2/3: this micro-batch's gradients so far, into the pieces
      model_.scatter_grads(*groups_.dp);
      return;
    }
    if (instr.zero == ZeroOp::GatherParams) { // ZeRO-3: the unit's parameters, before its forward or backward
      model_.gather_params(*groups_.dp, unit_params(instr));
      return;
    }
    if (instr.bucket < 0) {
      return; // the distributed optimizer's parameter all-gather: done at the end of its step (optimizer_step)
    }
    const auto kb = static_cast<std::size_t>(instr.bucket);
    Bucket& bucket = buckets_.at(kb);
    // The distributed optimizer reduce-scatters each segment in place (this rank's piece gets the DP sum), unless
    // the plan all-reduces its sharded grads (DeepSpeed's BF16 optimizer: Plan::all_reduce_sharded_grads).
    if (model_.shards_optimizer() && !options_.plan.all_reduce_sharded_grads) {
      for (const ShardSegment& segment : model_.optimizer_shards().segments.at(kb)) {
        bucket.requests.push_back(groups_.dp->reduce_scatter_in_place_async(
            std::span<float>(model_.grads() + segment.begin, segment.end - segment.begin)));
      }
    } else if (bucket.range.end > bucket.range.begin) {
      bucket.requests.push_back(groups_.dp->all_reduce_async(
          std::span<float>(model_.grads() + bucket.range.begin, bucket.range.end - bucket.range.begin)));
    }
    return;
  }
  case InstrKind::CollectiveWait: {
    if (instr.bucket >= 0) {
      buckets_.at(static_cast<std::size_t>(instr.bucket)).wait();
    }
    return;
  }
  case InstrKind::OptimizerStep: optimizer_step(); return;
  case InstrKind::Free: micro_.erase({instr.chunk, instr.microbatch}); return;
  }
}

// Under sequence parallelism the replicated parameters (norms, row-parallel biases, the position table) saw only this
// rank's share of the sequence: sum them over TP, as Megatron's _allreduce_layernorm_grads does. They are small and
// many (about six per layer), so they travel packed in one buffer: one all-reduce instead of one per parameter.
void CudaTrainer::reduce_sequence_parallel_grads() {
  if (!model_.sequence_parallel()) {
    return;
  }
  const auto& infos = model_.infos();
  std::size_t total = 0;
  for (const ParamInfo& info : infos) {
    total += info.sequence_parallel_grad ? info.size() : 0;
  }
  if (total == 0) {
    return;
  }
  F32Buffer packed(total, stream_);
  const auto copy_each = [&](bool to_packed) {
    std::size_t at = 0;
    for (std::size_t idx = 0; idx < infos.size(); ++idx) {
      if (!infos[idx].sequence_parallel_grad) {
        continue;
      }
      float* grad = model_.grad(static_cast<int>(idx));
      const std::size_t bytes = infos[idx].size() * sizeof(float);
      CUDA_CHECK(cudaMemcpyAsync(to_packed ? packed.get() + at : grad, to_packed ? grad : packed.get() + at, bytes,
                                 cudaMemcpyDeviceToDevice, stream_));
      at += infos[idx].size();
    }
  };
  copy_each(true);
  groups_.tp->all_reduce(std::span<float>(packed.get(), total));
  copy_each(false);
}

template <typename Fn> void CudaTrainer::for_each_owned(int idx, Fn&& fn) const {
  const std::size_t begin = model_.device_layout().offsets[static_cast<std::size_t>(idx)];
  const std::size_t end = begin + model_.infos()[static_cast<std::size_t>(idx)].size();
  for (const OwnedPiece& piece : model_.optimizer_shards().owned) {
    const std::size_t lo = std::max(begin, piece.begin);
    const std::size_t hi = std::min(end, piece.begin + piece.size);
    if (lo < hi) {
      fn(lo, hi, piece.shard_offset + (lo - piece.begin));
    }
  }
}

// ZeRO-2: a bucket's gradients of one micro-batch are reduce-scattered right after the last backward (or W) of that
// micro-batch that writes into it, so only the buckets being filled are whole on the device (the simulator's ZeRO-2
// double buffer; DeepSpeed's reduce_bucket_size). The program's own ScatterGrads, later, find little or nothing left.
void CudaTrainer::setup_zero2_scatters() {
  if (!model_.shards_grads()) {
    return;
  }
  std::map<std::pair<int, int>, std::size_t> last; // (micro-batch, bucket) -> instruction
  for (std::size_t pos = 0; pos < program_.instrs.size(); ++pos) {
    const Instr& instr = program_.instrs[pos];
    if (instr.kind != InstrKind::Backward && instr.kind != InstrKind::WeightGrad) {
      continue;
    }
    for (const int p : unit_params(instr)) {
      last[{instr.microbatch, model_.bucket_of(p)}] = pos;
    }
  }
  scatter_after_.assign(program_.instrs.size(), {});
  for (const auto& [key, pos] : last) {
    scatter_after_[pos].push_back(static_cast<std::size_t>(key.second));
  }
}

void CudaTrainer::ensure_gathered(const Instr& instr) {
  if (stale_.empty()) {
    return;
  }
  for (const int p : unit_params(instr)) {
    if (stale_[static_cast<std::size_t>(p)] == 0) {
      continue;
    }
    const std::size_t begin = model_.device_layout().offsets[static_cast<std::size_t>(p)];
    const std::size_t end = begin + model_.infos()[static_cast<std::size_t>(p)].size();
    for (Bucket& bucket : buckets_) {
      if (bucket.range.begin < end && bucket.range.end > begin) {
        Bucket::wait(bucket.gathers);
      }
    }
    model_.refresh_replica(p);
    stale_[static_cast<std::size_t>(p)] = 0;
  }
}

// The optimizer step over the pieces of the flat buffers this rank owns (for_each_owned): without sharding one piece,
// the whole buffer, whose gradients the DP buckets all-reduced. With the distributed optimizer (Megatron-Core's
// DistributedOptimizer; ZeRO-1) the buckets' reduce-scatters left the DP sum of every gradient in the piece its owner
// holds, and the global norm is summed over DP too (each element counted once). In order: the tied embedding's
// all-reduce over the embedding group (both stages own the same part of it), the TP sum of the sequence-parallel
// gradients, the global norm over unique parameters (as the CPU runtime; logged every step as Megatron does and used
// for clipping: one host read-back per step), AdamW (fp32 master and moments, the bf16 copy written in place); then,
// sharded, one in-place all-gather of the bf16 copy per segment, which leaves every rank with the whole updated
// model: at the end of the step, or with --overlap-param-gather behind the next step's forward, as Megatron's.
void CudaTrainer::optimizer_step() {
  for (auto& bucket : buckets_) {
    bucket.wait();
  }
  const auto& infos = model_.infos();
  const bool sharded = model_.shards_optimizer();
  // The reduced gradient of flat element lo (its compact position pos): in the full buffer (distributed optimizer)
  // or in this rank's pieces (ZeRO-2, after the last buckets are scattered, as the CPU's zero_optimizer_step).
  const bool zero2 = model_.shards_grads();
  if (zero2) {
    model_.scatter_grads(*groups_.dp);
  }
  float* const base = zero2 ? model_.sharded_grads() : model_.grads();
  const auto grad_at = [&](std::size_t lo, std::size_t pos) { return base + (zero2 ? pos : lo); };
  // --overlap-param-gather: every gather of the last step has been waited for by the forwards; make sure before the
  // update writes the bf16 copy again.
  for (Bucket& bucket : buckets_) {
    Bucket::wait(bucket.gathers);
  }
  for (std::size_t idx = 0; idx < stale_.size(); ++idx) {
    if (stale_[idx] != 0) {
      model_.refresh_replica(static_cast<int>(idx));
    }
  }
  stale_.clear();
  const int wte = model_.host_layout().params().find("embed.wte");
  if (options_.model.tied_embeddings && wte >= 0 && groups_.embedding->size() > 1) {
    for_each_owned(wte, [&](std::size_t lo, std::size_t hi, std::size_t pos) {
      groups_.embedding->all_reduce(std::span<float>(grad_at(lo, pos), hi - lo));
    });
  }
  if (!zero2) {
    reduce_sequence_parallel_grads(); // whole tensors: the owned parts are what the update reads
  } else if (model_.sequence_parallel()) {
    for (std::size_t idx = 0; idx < infos.size(); ++idx) {
      if (infos[idx].sequence_parallel_grad) {
        for_each_owned(static_cast<int>(idx), [&](std::size_t lo, std::size_t hi, std::size_t pos) {
          groups_.tp->all_reduce(std::span<float>(grad_at(lo, pos), hi - lo));
        });
      }
    }
  }
  norm_acc_.zero(stream_);
  for (std::size_t idx = 0; idx < infos.size(); ++idx) {
    if (!infos[idx].counts_in_grad_norm(groups_.coord.tp_rank)) {
      continue;
    }
    for_each_owned(static_cast<int>(idx), [&](std::size_t lo, std::size_t hi, std::size_t pos) {
      kernels::elementwise::sum({norm_acc_.get(), grad_at(lo, pos), static_cast<std::int64_t>(hi - lo), 1.0f, true},
                                stream_);
    });
  }
  for (Communicator* group : {groups_.dp.get(), groups_.tp.get(), groups_.pp.get()}) {
    if (group->size() > 1 && (sharded || group != groups_.dp.get())) {
      group->all_reduce(std::span<float>(norm_acc_.get(), 1));
    }
  }
  float total = 0.0f;
  CUDA_CHECK(cudaMemcpyAsync(&total, norm_acc_.get(), sizeof(float), cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  grad_norm_ = std::sqrt(static_cast<double>(total));
  const cpu::AdamWConfig& config = options_.optimizer;
  const float grad_scale = cpu::clip_grad_scale(total, config);
  for (std::size_t idx = 0; idx < infos.size(); ++idx) {
    for_each_owned(static_cast<int>(idx), [&](std::size_t lo, std::size_t hi, std::size_t at) {
      kernels::adamw::Args args;
      args.param = model_.masters() + at;
      args.m = model_.moments1() + at;
      args.v = model_.moments2() + at;
      args.param_bf16 = model_.shards_params() ? model_.sharded_weights() + at : model_.weights() + lo;
      args.grad = grad_at(lo, at);
      args.n = static_cast<std::int64_t>(hi - lo);
      args.step = step_;
      args.lr = config.lr;
      args.beta1 = config.beta1;
      args.beta2 = config.beta2;
      args.eps = config.eps;
      args.weight_decay = infos[idx].weight_decay ? config.weight_decay : 0.0f;
      args.grad_scale = grad_scale;
      kernels::adamw::update(args, stream_);
    });
  }
  // bf16 pairs travel as 32-bit words (segments are multiples of 2 * dp elements). --overlap-param-gather (Megatron's
  // flag): on the communication stream, each bucket waited for by the first forward that reads it (ensure_gathered).
  if (!sharded || model_.shards_params()) {
    return; // ZeRO-3: the units gather their parameters before they run (GatherParams)
  }
  const bool overlap = options_.plan.overlap_param_gather;
  const auto& all_segments = model_.optimizer_shards().segments;
  for (std::size_t kb = 0; kb < all_segments.size(); ++kb) {
    for (const ShardSegment& segment : all_segments[kb]) {
      const std::span<float> words(reinterpret_cast<float*>(model_.weights() + segment.begin),
                                   (segment.end - segment.begin) / 2);
      if (overlap) {
        buckets_[kb].gathers.push_back(groups_.dp->all_gather_in_place_async(words));
      } else {
        groups_.dp->all_gather_in_place(words);
      }
    }
  }
  if (overlap) {
    stale_.assign(infos.size(), 1);
  } else {
    model_.refresh_replicas();
  }
}

double CudaTrainer::step() {
  ++step_;
  micro_.clear();
  event_instr_.clear();
  model_.zero_grads();
  loss_acc_.zero(stream_);
  if (watchdog_) {
    watchdog_->arm(step_);
  }
  const bool trace = options_.trace;
  if (trace) {
    timeline_.begin_step(stream_);
  }
  const int world_rank = world_.rank();
  try {
    for (int idx = 0; idx < static_cast<int>(program_.instrs.size()); ++idx) {
      const Instr& instr = program_.instrs[static_cast<std::size_t>(idx)];
      current_instr_.store(idx);
      const bool timed = trace && instr.kind != InstrKind::Free && instr.kind != InstrKind::CollectiveWait;
      std::size_t handle = 0;
      if (timed) {
        handle = timeline_.start(instr.task == NO_TASK ? static_cast<model::TaskId>(idx) : instr.task, instr.stream,
                                 instr.label, category_of(instr.kind), stream_);
        event_instr_.push_back(idx);
      }
      execute(instr);
      if (timed) {
        // A DP bucket's all-reduce ends on the communication stream; the ZeRO collectives (GatherParams,
        // ScatterGrads) are ordered on the compute stream, which waits for them.
        cudaStream_t end_stream = stream_;
        if (instr.kind == InstrKind::CollectiveStart && instr.zero == ZeroOp::None) {
          end_stream = comm_stream_of(*groups_.dp, stream_);
        } else if (instr.kind == InstrKind::Send) {
          end_stream = comm_stream_of(p2p(instr), stream_);
        }
        timeline_.stop(handle, end_stream);
      }
      // ZeRO-2/3: the buckets this instruction finished, after its event (they are not part of its task).
      if (!scatter_after_.empty()) {
        for (const std::size_t kb : scatter_after_[static_cast<std::size_t>(idx)]) {
          model_.scatter_bucket(*groups_.dp, kb);
        }
      }
    }
    current_instr_.store(END_OF_STEP);
    for (auto& send : sends_) {
      send.request->wait();
    }
    sends_.clear();
    micro_.clear();
    // Loss of the step: the last stage's tp_rank 0 ranks hold their replica's share; sum over the world.
    if (world_.size() > 1) {
      world_.all_reduce(std::span<float>(loss_acc_.get(), 1));
    }
    float loss = 0.0f;
    CUDA_CHECK(cudaMemcpyAsync(&loss, loss_acc_.get(), sizeof(float), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (watchdog_) {
      watchdog_->disarm();
    }
    // No host sync per micro-batch: the faulty micro-batch is not known here (the CPU backend names it).
    if (!std::isfinite(loss)) {
      throw std::runtime_error(fmt::format("loss is {}: stopping the run (diverged or bad input: check the learning "
                                           "rate and the data)",
                                           loss));
    }
    current_instr_.store(-1);
    return static_cast<double>(loss);
  } catch (const std::exception& e) {
    const std::string message =
        fmt::format("rank {}: step {}: task {}: {}", world_rank, step_, current_label(), e.what());
    if (options_.abort_on_error && world_.size() > 1) {
      std::fprintf(stderr, "%s\n", message.c_str());
      std::fflush(stderr);
      world_.abort(1);
    }
    throw RunError(message);
  }
}

// Events of the last step, every rank, on rank 0; instructions of one IR task merge into one event (first start,
// last end) as in the CPU runtime.
std::vector<model::TimelineEvent> CudaTrainer::gather_timeline() {
  constexpr std::size_t FIELDS = 6;
  const std::vector<model::TimelineEvent> local = timeline_.collect();
  std::vector<double> packed;
  for (std::size_t e = 0; e < local.size(); ++e) {
    const Instr& instr = program_.instrs[static_cast<std::size_t>(event_instr_[e])];
    packed.insert(packed.end(), {instr.task == NO_TASK ? -1.0 : static_cast<double>(instr.task),
                                 static_cast<double>(instr.stream), static_cast<double>(instr.kind),
                                 static_cast<double>(event_instr_[e]), local[e].start_s, local[e].end_s});
  }
  std::vector<std::vector<double>> all;
  if (world_.size() == 1) {
    all.push_back(std::move(packed));
  } else {
    all = gather_doubles(world_, packed);
  }
  std::vector<model::TimelineEvent> out;
  for (std::size_t rank = 0; rank < all.size(); ++rank) {
    std::map<model::TaskId, std::string> labels;
    if (rank < all_programs_.size()) {
      for (const Instr& instr : all_programs_[rank].instrs) {
        if (instr.task != NO_TASK) {
          labels.emplace(instr.task, instr.label);
        }
      }
    }
    std::map<model::TaskId, std::size_t> by_task;
    const std::vector<double>& data = all[rank];
    for (std::size_t e = 0; e + FIELDS <= data.size(); e += FIELDS) {
      const bool has_task = data[e] >= 0.0;
      const auto task = has_task ? static_cast<model::TaskId>(data[e]) : static_cast<model::TaskId>(data[e + 3]);
      const auto stream = static_cast<model::Stream>(static_cast<int>(data[e + 1]));
      const auto kind = static_cast<InstrKind>(static_cast<int>(data[e + 2]));
      const double start_s = data[e + 4];
      const double end_s = data[e + 5];
      if (has_task) {
        const auto [it, inserted] = by_task.emplace(task, out.size());
        if (!inserted) {
          model::TimelineEvent& merged = out[it->second];
          merged.start_s = std::min(merged.start_s, start_s);
          merged.end_s = std::max(merged.end_s, end_s);
          continue;
        }
      }
      const auto label = labels.find(task);
      std::string name = label != labels.end() ? label->second : fmt::format("{} r{}", to_string(kind), rank);
      out.push_back({task, static_cast<int>(rank), stream, start_s, end_s, std::move(name), category_of(kind)});
    }
  }
  return out;
}

} // namespace

CudaRunResult run_training_cuda(const RunOptions& requested) {
  validate_cuda_run_options(requested);
  const LaunchEnv env = read_process_launch_env();
  DeviceSetup device(env);
  std::unique_ptr<NcclCommunicator> world = NcclCommunicator::world(env, device.stream, RENDEZVOUS_TIMEOUT_S);
  // The IR only needs the rank count from the cluster when none is described (as exec/runtime.cpp).
  RunOptions options = requested;
  options.cluster.num_gpus = world->size();
  if (options.cluster.gpus_per_node <= 0) {
    options.cluster.gpus_per_node = world->size();
  }
  validate_run_options(options, *world);
  CudaRunResult result;
  result.is_root = world->rank() == 0;
  result.world_size = world->size();
  result.launcher = env.launcher;
  result.device = device.name;
  {
    CudaTrainer trainer(options, env, device, *world);
    result.attention_kernel = trainer.attention_kernel();
    for (int step = 0; step < options.steps; ++step) {
      const Clock::time_point start = Clock::now();
      result.run.losses.push_back(trainer.step());
      result.run.step_time_s.push_back(seconds_since(start));
      result.run.grad_norms.push_back(trainer.last_grad_norm());
    }
    result.run.median_step_time_s = median_after_first(result.run.step_time_s);
    if (options.trace) {
      result.run.timeline = trainer.gather_timeline();
    }
    CUDA_CHECK(cudaStreamSynchronize(device.stream));
  }
  cudaMemPool_t pool = nullptr;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, env.local_rank));
  std::uint64_t high = 0;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &high));
  result.peak_reserved_bytes = static_cast<double>(high);
  const double mine = result.peak_reserved_bytes;
  if (world->size() == 1) {
    result.peak_reserved_bytes_per_rank = {mine};
  } else {
    for (const std::vector<double>& rank : gather_doubles(*world, std::span<const double>(&mine, 1))) {
      result.peak_reserved_bytes_per_rank.push_back(rank.empty() ? 0.0 : rank.front());
    }
  }
  return result;
}

} // namespace cuboid::exec::cuda
