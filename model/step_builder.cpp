// build_step_graph: one Compute task per (layer | embedding | head, micro-batch, phase) on each materialised rank,
// chained in schedule order on the compute stream; P2P sends between virtual stages; bucketed DP gradient
// collectives; one optimizer task per rank. Every rank of a stage has the same compute sequence, so it is built once
// per stage as a template and copied per rank (the rank-class and all-ranks graphs share it by construction).
// ZeRO-2 reduce-scatters every micro-batch's gradient buckets; ZeRO-3 (FSDP) adds a parameter all-gather before
// every compute task and a gradient reduce-scatter after every backward task (add_zero3_collectives).
#include "model/step_builder.hpp"

#include "model/errors.hpp"
#include "model/memory_model.hpp"
#include "model/op_catalog.hpp"
#include "model/rank_grid.hpp"
#include "model/schedule.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <map>
#include <numeric>

namespace cuboid::model {

namespace {

constexpr double BF16_BYTES = 2.0;
constexpr double FP32_GRAD_BYTES = 4.0;   // Megatron reduces the fp32 main grads (grad_reduce_in_fp32 default)
constexpr std::uint32_t NONE = UINT32_MAX;

std::size_t idx(int value) { return static_cast<std::size_t>(value); }

// A compute task of a chunk (layer >= 0, embedding or head): activations live forward -> backward (zero-bubble:
// part of them until the weight-gradient task), workspace 1 task.
struct Unit {
  int layer = -1;
  std::int32_t block = -1;
  double act_alloc_bytes = 0.0; // at the task's start
  double act_free_bytes = 0.0;  // at the task's end
  double workspace_bytes = 0.0;
};

// A gradient bucket (grad_bucket_ends in memory_model.hpp), waiting for template task last_task. ZeRO-2: one per
// (micro-batch, bucket), `microbatch` >= 0.
struct Bucket {
  double params = 0.0;
  int chunk = 0;
  std::uint32_t last_task = NONE;
  int microbatch = -1;
  std::uint32_t first_task = NONE; // ZeRO-2: template task writing the bucket's first gradients
};

// A P2P send issued after template task `from` to (to_stage, to_chunk), for (microbatch, chunk) of this stage.
struct Send {
  std::uint32_t from = 0;
  Phase phase = Phase::Forward;
  int microbatch = 0, chunk = 0, to_stage = 0, to_chunk = 0;
};

// --- mixture of experts --- The routed-expert gradients of a chunk, reduced over the expert-DP group once the
// chunk's last backward is done (template task last_task).
struct ExpertSync {
  double params = 0.0;
  int chunk = 0;
  std::uint32_t last_task = NONE;
};

// A compute task of a stage template: only the fields that differ between a template's tasks, its memory effects by
// index into StageTemplate::effects (24 bytes, not a 168-byte Task: a template holds m x units tasks, and a
// 1T / 3072-GPU step has 64 templates of 2048 tasks).
struct TemplateTask {
  Phase phase = Phase::Forward;
  int chunk = 0;
  int microbatch = 0;
  int layer = -1;
  std::int32_t block = -1;
  std::uint32_t effects = 0;
};

struct TaskEffects {
  MemBytes alloc_at_start{};
  MemBytes free_at_end{};
};

struct StageTemplate {
  std::vector<ExpertSync> expert_syncs; // --- mixture of experts ---
  int stage = 0;
  std::vector<TemplateTask> tasks; // compute tasks in schedule order
  std::vector<TaskEffects> effects; // the distinct memory effects of `tasks`
  std::vector<std::uint32_t> fwd_first, bwd_first; // [mb * vp + chunk] -> template index of the first task
  std::vector<Send> sends;
  std::vector<Bucket> buckets;
  std::vector<double> task_params; // parameters (per TP rank, unsharded) of the unit each compute task runs
  std::int32_t optimizer_block = -1;
  MemBytes static_bytes{};

  /// Template task k as the Task of materialised rank `rank`.
  [[nodiscard]] Task task(std::size_t k, int rank) const {
    const TemplateTask& t = tasks[k];
    const TaskEffects& mem = effects[t.effects];
    return Task{.kind = TaskKind::Compute, .phase = t.phase, .rank = rank, .stage = stage, .chunk = t.chunk,
                .microbatch = t.microbatch, .layer = t.layer, .block = t.block, .alloc_at_start = mem.alloc_at_start,
                .free_at_end = mem.free_at_end};
  }
  /// Index of `mem` in `effects` (bitwise equal), appended if new. Units alternate between a few effects: the
  /// last index found is tried first.
  std::uint32_t effect_index(const TaskEffects& mem) {
    const auto same = [&mem](const TaskEffects& entry) { return std::memcmp(&entry, &mem, sizeof(TaskEffects)) == 0; };
    if (last_effect < effects.size() && same(effects[last_effect])) {
      return last_effect;
    }
    for (std::size_t idx = 0; idx < effects.size(); ++idx) {
      if (same(effects[idx])) {
        last_effect = static_cast<std::uint32_t>(idx);
        return last_effect;
      }
    }
    effects.push_back(mem);
    last_effect = static_cast<std::uint32_t>(effects.size() - 1);
    return last_effect;
  }
  std::uint32_t last_effect = 0;
};

void set(MemBytes& bytes, MemTag tag, double value) { bytes[static_cast<std::size_t>(tag)] = value; }

class Builder {
public:
  // Fills `graph` in place (Boost 1.74's adjacency_list has no move constructor: moving a TaskGraph copies it).
  Builder(const ModelSpec& model, const Plan& plan, TaskGraph& graph)
      : model_(model), plan_(plan), inst_(graph.get_instantiation()), grid_(plan.tp, plan.cp, plan.dp, plan.pp),
        m_(static_cast<int>(plan.num_microbatches())), split_(splits_backward(plan.schedule)), graph_(graph) {}

  void build(std::size_t max_tasks) {
    if (m_ < 1) {
      throw InfeasibleError(fmt::format("plan has {} micro-batches (global batch {} / (micro-batch {} x dp {})): need 1",
                                        m_, plan_.global_batch_size, plan_.micro_batch_size, plan_.dp));
    }
    const std::size_t count = count_tasks();
    if (count > max_tasks) {
      throw InfeasibleError(fmt::format("plan would create {} tasks (limit {}): {} micro-batches on {} stages with {} "
                                        "materialised ranks per stage{}",
                                        count, max_tasks, m_, plan_.pp, ranks_per_stage(),
                                        inst_ == Instantiation::AllRanks ? " (drop --all-ranks: rank classes simulate "
                                                                           "one rank per stage)"
                                                                         : " (use fewer micro-batches)"));
    }
    graph_.reserve(count);
    add_blocks();
    for (int stage = 0; stage < plan_.pp; ++stage) {
      stages_.push_back(make_template(stage));
    }
    add_ranks();
    // Compute of every rank first (P2P targets must exist), then sends, then DP sync and the optimizer.
    add_dp_groups();
    add_expert_dp_groups(); // --- mixture of experts ---
    grads_final_.assign(ranks_.size(), NONE);
    optimizer_of_.assign(ranks_.size(), NONE);
    for (const auto add : {&Builder::add_compute, &Builder::add_sends, &Builder::add_gradient_sync_and_optimizer,
                           &Builder::add_tied_embedding_sync}) {
      for (std::size_t ridx = 0; ridx < ranks_.size(); ++ridx) {
        (this->*add)(ridx);
      }
    }
    graph_.model_flops_per_step = model_flops_per_step(model_, plan_);
    graph_.hw_flops_per_step = hw_flops_per_step(model_, plan_);
    CUBOID_ASSERT(graph_.num_tasks() == count, "built {} tasks, counted {}", graph_.num_tasks(), count);
  }

private:
  // Ranks of one pipeline stage: tp*cp*dp (all ranks), or the one representative (tp = cp = dp = 0) of rank classes.
  [[nodiscard]] int ranks_per_stage() const {
    return inst_ == Instantiation::AllRanks ? plan_.tp * plan_.cp * plan_.dp : 1;
  }

  static bool has_embedding(const std::vector<ChunkLayout>& layouts) {
    return std::any_of(layouts.begin(), layouts.end(), [](const ChunkLayout& lay) { return lay.has_embedding; });
  }

  // --- ZeRO / FSDP ---
  // Gradients reduce-scattered per micro-batch and sharded (ZeRO >= 2), parameters sharded (ZeRO-3); only with
  // dp > 1 (dp = 1 shards nothing).
  [[nodiscard]] bool sharded_grads() const { return plan_.get_zero_stage() >= 2 && plan_.dp > 1; }
  [[nodiscard]] bool sharded_params() const { return plan_.get_zero_stage() >= 3 && plan_.dp > 1; }
  // Whether a bucket's parameters are all-gathered after the optimizer: all of them, or with ZeRO-2 (one bucket per
  // micro-batch) those of the last micro-batch.
  [[nodiscard]] bool is_gathered(const Bucket& bucket) const { return bucket.microbatch < 0 || bucket.microbatch == m_ - 1; }

  // Exact task count from the layouts alone (no per-task work): compute + P2P + DP collectives + optimizer.
  [[nodiscard]] std::size_t count_tasks() const {
    std::size_t total = 0;
    for (int stage = 0; stage < plan_.pp; ++stage) {
      const std::vector<ChunkLayout> layouts = chunk_layouts(plan_, model_.num_layers, stage);
      std::size_t per_rank = 1;
      for (std::size_t chunk = 0; chunk < layouts.size(); ++chunk) {
        const std::vector<double> params = chunk_grad_units(model_, plan_, layouts[chunk], has_embedding(layouts));
        const int virtual_stage = virtual_stage_of(plan_, stage, static_cast<int>(chunk));
        const bool first = virtual_stage == 0;
        const bool last = virtual_stage == plan_.pp * plan_.vp - 1;
        // A send between chunks of one rank (pp == 1, or zb-v's turn of the V on stage pp - 1) is an edge, no task.
        const auto remote = [&](int to_virtual) { return locate_virtual_stage(plan_, to_virtual).stage != stage; };
        const std::size_t sends = (first || !remote(virtual_stage - 1) ? 0U : 1U) +
                                  (last || !remote(virtual_stage + 1) ? 0U : 1U);
        // zero-bubble: B has no embedding task (its backward is all weight gradient) and W one task per unit.
        const std::size_t backward = split_ ? 2 * params.size() - (layouts[chunk].has_embedding ? 1U : 0U)
                                            : params.size();
        per_rank += idx(m_) * (params.size() + backward + sends);
        if (sharded_params()) {
          per_rank += idx(m_) * 3 * params.size(); // all-gather before each forward and backward, reduce-scatter
        } else if (sharded_grads()) {
          per_rank += grad_bucket_ends(plan_, params).size() * (idx(m_) + 1); // per-micro-batch RS + one AG
        } else if (plan_.dp_cp_size() > 1) {
          per_rank += grad_bucket_ends(plan_, params).size() * (plan_.distributed_optimizer ? 2U : 1U);
        }
        if (has_expert_sync(layouts[chunk])) { // --- mixture of experts ---
          per_rank += plan_.distributed_optimizer ? 2U : 1U;
        }
      }
      if (tied_embedding_sync() && (stage == embedding_stage() || stage == head_stage())) {
        per_rank += 1; // the embedding group's all-reduce
      }
      total += per_rank * idx(ranks_per_stage());
    }
    return total;
  }

  // Tied embeddings on two pipeline stages: the first stage's word embedding and the last stage's copy used by the
  // output layer all-reduce their gradients over the two-rank embedding group after the DP reduction, before the
  // optimizer (Megatron-LM finalize_model_grads -> _allreduce_word_embedding_grads; DeepSpeed's PipelineEngine
  // ReduceTiedGrads runs it just before ReduceGrads, the same serial cost on a blocking engine). ZeRO-2/3 shard that
  // gradient over DP and are not modelled here; zb-v holds both ends on stage 0 (no exchange).
  [[nodiscard]] int embedding_stage() const { return locate_virtual_stage(plan_, 0).stage; }
  [[nodiscard]] int head_stage() const { return locate_virtual_stage(plan_, plan_.pp * plan_.vp - 1).stage; }
  [[nodiscard]] bool tied_embedding_sync() const {
    return model_.tied_embeddings && plan_.pp > 1 && embedding_stage() != head_stage() && plan_.get_zero_stage() <= 1;
  }

  // --- mixture of experts --- A chunk's expert gradients need their own collective when it holds MoE layers and
  // more than one rank holds the same experts.
  [[nodiscard]] bool has_expert_sync(const ChunkLayout& lay) const {
    return model_.is_moe() && plan_.expert_dp() > 1 && chunk_expert_params(model_, plan_, lay) > 0.0;
  }

  // Blocks shared by every task of their kind, and the compute units of each chunk kind.
  void add_blocks() {
    StepBlocks blocks = make_step_blocks(model_, plan_);
    const MemoryOptions options;
    const double layer_act = layer_activation_bytes(model_, plan_, options);
    const double layer_workspace = layer_backward_workspace_bytes(model_, plan_, options);
    const double embed_act = embedding_activation_bytes(model_, plan_);
    const double head_act = head_activation_bytes(model_, plan_);
    // Context parallelism: the CP exchange's buffers (cp_comm_buffer_bytes) are the forward's workspace (the
    // backward's are in layer_backward_workspace_bytes).
    layer_ = {-1, graph_.add_block(std::move(blocks.layer_fwd)), layer_act, 0.0,
              cp_comm_buffer_bytes(model_, plan_, false)};
    if (split_) {
      add_split_blocks(blocks, layer_act, layer_workspace);
    } else {
      layer_bwd_ = {-1, graph_.add_block(std::move(blocks.layer_bwd)), 0.0, layer_act, layer_workspace};
    }
    embed_ = {-1, graph_.add_block(std::move(blocks.embed_fwd)), embed_act, 0.0, 0.0};
    if (split_) {
      embed_w_ = {-1, graph_.add_block(std::move(blocks.embed_bwd_weight)), 0.0, embed_act, 0.0};
    } else {
      embed_bwd_ = {-1, graph_.add_block(std::move(blocks.embed_bwd)), 0.0, embed_act, 0.0};
    }
    head_ = {-1, graph_.add_block(std::move(blocks.head_fwd)), head_act, 0.0, 0.0};
    if (split_) {
      // The logits gradient (the unsplit backward's workspace) lives from B to W: it is W-pending, not workspace.
      const WeightGradPending pending = head_weight_grad_pending(model_, plan_);
      head_b_ = {-1, graph_.add_block(std::move(blocks.head_bwd_input)), pending.new_bytes,
                 head_act - pending.kept_bytes, 0.0};
      head_w_ = {-1, graph_.add_block(std::move(blocks.head_bwd_weight)), 0.0,
                 pending.kept_bytes + pending.new_bytes, 0.0};
    } else {
      head_bwd_ = {-1, graph_.add_block(std::move(blocks.head_bwd)), 0.0, head_act,
                   head_backward_workspace_bytes(model_, plan_)};
    }
    if (model_.is_moe()) { // --- mixture of experts --- (zero-bubble schedules refuse MoE models: no B/W split here)
      const double moe_act = moe_layer_activation_bytes(model_, plan_, options);
      moe_ = {-1, graph_.add_block(std::move(blocks.moe_layer_fwd)), moe_act, 0.0, 0.0};
      moe_bwd_ = {-1, graph_.add_block(std::move(blocks.moe_layer_bwd)), 0.0, moe_act,
                  moe_layer_backward_workspace_bytes(model_, plan_, options)};
    }
  }

  // --- zero-bubble schedules ---
  // B frees the activations W does not need and allocates the output gradients W will read; W frees the rest, so
  // F + B + W allocate and free the same bytes as F + the unsplit backward.
  void add_split_blocks(StepBlocks& blocks, double layer_act, double layer_workspace) {
    const WeightGradPending pending = layer_weight_grad_pending(model_, plan_);
    layer_b_ = {-1, graph_.add_block(std::move(blocks.layer_bwd_input)), pending.new_bytes,
                layer_act - pending.kept_bytes, layer_workspace};
    layer_w_ = {-1, graph_.add_block(std::move(blocks.layer_bwd_weight)), 0.0, pending.kept_bytes + pending.new_bytes,
                0.0};
  }

  // Units of a chunk in execution order: forward embedding, layers, head; backward the reverse. Zero-bubble: the
  // input-gradient (Backward) units have no embedding, the weight-gradient units run in the same reverse order (the
  // grad-unit order of chunk_grad_units, which the DP buckets rely on).
  [[nodiscard]] std::vector<Unit> units_of(const ChunkLayout& lay, Phase phase) const {
    const bool fwd = phase == Phase::Forward;
    const bool wgrad = phase == Phase::WeightGrad;
    const auto pick = [&](const Unit& forward, const Unit& backward, const Unit& input, const Unit& weight) {
      return fwd ? forward : wgrad ? weight : split_ ? input : backward;
    };
    std::vector<Unit> units;
    if (lay.has_embedding && (fwd || wgrad || !split_)) {
      units.push_back(pick(embed_, embed_bwd_, embed_bwd_, embed_w_));
    }
    for (int layer = lay.first_layer; layer < lay.first_layer + lay.num_layers; ++layer) {
      if (model_.is_moe_layer(layer)) { // --- mixture of experts ---
        units.push_back(fwd ? moe_ : moe_bwd_);
      } else {
        units.push_back(pick(layer_, layer_bwd_, layer_b_, layer_w_));
      }
      units.back().layer = layer;
    }
    if (lay.has_head) {
      units.push_back(pick(head_, head_bwd_, head_b_, head_w_));
    }
    if (!fwd) {
      std::reverse(units.begin(), units.end());
    }
    return units;
  }

  StageTemplate make_template(int stage) {
    const int pp = plan_.pp;
    const int vp = plan_.vp;
    const std::vector<ChunkLayout> layouts = chunk_layouts(plan_, model_.num_layers, stage);
    const std::vector<ScheduleStep> order = stage_order(effective_schedule(plan_), pp, stage, m_, vp);
    std::vector<std::vector<Unit>> fwd_units;
    std::vector<std::vector<Unit>> bwd_units;
    std::vector<std::vector<Unit>> wgrad_units; // zero-bubble only
    std::size_t per_mb = 0;
    for (const ChunkLayout& lay : layouts) {
      fwd_units.push_back(units_of(lay, Phase::Forward));
      bwd_units.push_back(units_of(lay, Phase::Backward));
      wgrad_units.push_back(split_ ? units_of(lay, Phase::WeightGrad) : std::vector<Unit>{});
      per_mb += fwd_units.back().size() + bwd_units.back().size() + wgrad_units.back().size();
    }
    StageTemplate tmpl;
    const std::size_t slots = idx(m_) * idx(vp);
    tmpl.fwd_first.assign(slots, NONE);
    tmpl.bwd_first.assign(slots, NONE);
    tmpl.tasks.reserve(per_mb * idx(m_));
    tmpl.sends.reserve(2 * slots);
    // Per chunk: the first template task of its last backward, and that backward's position in the order.
    std::vector<std::uint32_t> final_bwd(idx(vp), NONE);
    std::vector<std::size_t> last_bwd_step(idx(vp), 0);
    // ZeRO-2/3: every backward step (first template task, chunk, micro-batch) in schedule order.
    struct BackwardStep {
      std::uint32_t first = 0;
      int chunk = 0;
      int microbatch = 0;
    };
    std::vector<BackwardStep> backward_steps;
    const bool stage_embedding = has_embedding(layouts);
    // ZeRO-3: the head also reads (and writes the gradient of) a tied word embedding held on its own stage, which
    // head_params_per_rank counts with the embedding: its gather and reduce-scatter carry it too.
    const bool tied_here = model_.tied_embeddings && stage_embedding;
    const double head_params = head_params_per_rank(model_, plan_, stage_embedding) +
                               (tied_here && sharded_params() ? static_cast<double>(model_.vocab_size) *
                                                                    static_cast<double>(model_.hidden_size) / plan_.tp
                                                              : 0.0);
    const double embed_params = embedding_params_per_rank(model_, plan_);
    const double layer_params = layer_params_per_tp_rank(model_, plan_.tp);
    tmpl.stage = stage;
    TemplateTask task;
    TaskEffects mem;
    for (std::size_t step_idx = 0; step_idx < order.size(); ++step_idx) {
      const ScheduleStep& step = order[step_idx];
      const bool fwd = step.phase == Phase::Forward;
      const bool wgrad = step.phase == Phase::WeightGrad;
      const auto first = static_cast<std::uint32_t>(tmpl.tasks.size());
      task.phase = step.phase;
      task.chunk = step.chunk;
      task.microbatch = step.microbatch;
      for (const Unit& unit : (fwd ? fwd_units : wgrad ? wgrad_units : bwd_units)[idx(step.chunk)]) {
        task.layer = unit.layer;
        task.block = unit.block;
        // Forward stores its activations until the matching backward frees them; workspaces live for one task.
        set(mem.alloc_at_start, MemTag::Activations, unit.act_alloc_bytes);
        set(mem.free_at_end, MemTag::Activations, unit.act_free_bytes);
        set(mem.alloc_at_start, MemTag::Workspace, unit.workspace_bytes);
        set(mem.free_at_end, MemTag::Workspace, unit.workspace_bytes);
        const bool is_embedding = unit.block == embed_.block || unit.block == embed_bwd_.block;
        const double params = unit.layer >= 0 ? layer_params : (is_embedding ? embed_params : head_params);
        // ZeRO-2/3: the backward writes the unit's unsharded fp32 gradients, freed by its bucket's reduce-scatter;
        // ZeRO-3: the compute frees the unit's gathered bf16 parameters (allocated by its all-gather) when done.
        set(mem.alloc_at_start, MemTag::Grads, sharded_grads() && !fwd ? FP32_GRAD_BYTES * params : 0.0);
        set(mem.free_at_end, MemTag::Weights, sharded_params() ? BF16_BYTES * params : 0.0);
        task.effects = tmpl.effect_index(mem);
        tmpl.tasks.push_back(task);
        tmpl.task_params.push_back(params);
      }
      const auto last = static_cast<std::uint32_t>(tmpl.tasks.size() - 1);
      const std::size_t slot = idx(step.microbatch) * idx(vp) + idx(step.chunk);
      const int virtual_stage = virtual_stage_of(plan_, stage, step.chunk);
      // Sends to the next virtual stage (forward) or the previous one (backward); stage pp-1 chunk c feeds stage 0
      // chunk c+1 (interleaved wrap-around; zb-v: stage pp-1 chunk 0 feeds its own chunk 1).
      if (fwd) {
        tmpl.fwd_first[slot] = first;
        if (virtual_stage < pp * vp - 1) {
          const StageChunk to = locate_virtual_stage(plan_, virtual_stage + 1);
          tmpl.sends.push_back({last, step.phase, step.microbatch, step.chunk, to.stage, to.chunk});
        }
        continue;
      }
      // The gradients of a chunk are final after its last backward (zero-bubble: its last weight-gradient step).
      if (wgrad || !split_) {
        final_bwd[idx(step.chunk)] = first;
        last_bwd_step[idx(step.chunk)] = step_idx;
      }
      if (wgrad) {
        continue; // W feeds nothing downstream: no send
      }
      tmpl.bwd_first[slot] = first;
      backward_steps.push_back({first, step.chunk, step.microbatch});
      if (virtual_stage > 0) {
        const StageChunk to = locate_virtual_stage(plan_, virtual_stage - 1);
        tmpl.sends.push_back({last, step.phase, step.microbatch, step.chunk, to.stage, to.chunk});
      }
    }
    // Buckets per chunk, chunks in the order their gradients become final; a bucket waits for its last unit in the
    // chunk's last backward (the backward units run in grad-unit order, so unit u is task final_bwd + u).
    std::vector<int> chunks(idx(vp));
    std::iota(chunks.begin(), chunks.end(), 0);
    std::sort(chunks.begin(), chunks.end(),
              [&last_bwd_step](int lhs, int rhs) { return last_bwd_step[idx(lhs)] < last_bwd_step[idx(rhs)]; });
    // ZeRO-2: the same buckets for every micro-batch's backward, in schedule order (DeepSpeed stage 2 reduces each
    // micro-batch's gradients into the owner's shard; nothing unsharded is accumulated).
    for (const BackwardStep& bwd : sharded_grads() && !sharded_params() ? backward_steps : std::vector<BackwardStep>{}) {
      const std::vector<double> params = chunk_grad_units(model_, plan_, layouts[idx(bwd.chunk)], stage_embedding);
      std::size_t begin = 0;
      for (const std::size_t end_unit : grad_bucket_ends(plan_, params)) {
        const double bucket_params = std::accumulate(params.begin() + static_cast<std::ptrdiff_t>(begin),
                                                     params.begin() + static_cast<std::ptrdiff_t>(end_unit + 1), 0.0);
        tmpl.buckets.push_back({bucket_params, bwd.chunk, bwd.first + static_cast<std::uint32_t>(end_unit),
                                bwd.microbatch, bwd.first + static_cast<std::uint32_t>(begin)});
        begin = end_unit + 1;
      }
    }
    for (const int chunk : sharded_grads() ? std::vector<int>{} : chunks) {
      const std::vector<double> params = chunk_grad_units(model_, plan_, layouts[idx(chunk)], has_embedding(layouts));
      std::size_t begin = 0;
      for (const std::size_t end_unit : grad_bucket_ends(plan_, params)) {
        const double bucket_params = std::accumulate(params.begin() + static_cast<std::ptrdiff_t>(begin),
                                                     params.begin() + static_cast<std::ptrdiff_t>(end_unit + 1), 0.0);
        tmpl.buckets.push_back({bucket_params, chunk, final_bwd[idx(chunk)] + static_cast<std::uint32_t>(end_unit)});
        begin = end_unit + 1;
      }
    }
    // --- mixture of experts --- expert gradients of a chunk: after its last backward has finished entirely.
    for (const int chunk : chunks) {
      const ChunkLayout& lay = layouts[idx(chunk)];
      if (has_expert_sync(lay)) {
        const auto units = static_cast<std::uint32_t>(units_of(lay, Phase::Backward).size());
        tmpl.expert_syncs.push_back({chunk_expert_params(model_, plan_, lay), chunk, final_bwd[idx(chunk)] + units - 1});
      }
    }
    // The optimizer updates the rank's parameters (its 1/(dp*cp) shard with the distributed optimizer: Megatron
    // shards over the data-parallel group with context parallel).
    double params = params_per_rank(model_, plan_, stage) / (plan_.get_zero_stage() >= 1 ? plan_.dp_cp_size() : 1);
    if (model_.is_moe() && plan_.get_zero_stage() >= 1) { // --- mixture of experts --- experts sharded over dp/ep
      const double experts = expert_params_per_rank(model_, plan_, stage);
      params = (params_per_rank(model_, plan_, stage) - experts) / plan_.dp + experts / plan_.expert_dp();
    }
    tmpl.optimizer_block = graph_.add_block(make_optimizer_block(params));
    tmpl.static_bytes = static_memory(model_, plan_, stage);
    return tmpl;
  }

  void add_ranks() {
    for (int rank = 0; rank < grid_.world_size(); ++rank) {
      const RankCoord coord = grid_.coord_of(rank);
      if (inst_ == Instantiation::RankClasses && (coord.tp_rank != 0 || coord.dp_rank != 0 || coord.cp_rank != 0)) {
        continue;
      }
      graph_.add_rank({rank, coord.pp_rank,
                       static_cast<double>(inst_ == Instantiation::RankClasses ? plan_.tp * plan_.cp * plan_.dp : 1),
                       stages_[idx(coord.pp_rank)].static_bytes});
      ranks_.push_back(rank);
    }
    base_.assign(ranks_.size(), 0);
  }

  [[nodiscard]] const StageTemplate& stage_of(std::size_t ridx) const { return stages_[idx(graph_.ranks()[ridx].stage)]; }

  void add_compute(std::size_t ridx) {
    const StageTemplate& tmpl = stage_of(ridx);
    const int rank = ranks_[ridx];
    base_[ridx] = static_cast<TaskId>(graph_.num_tasks());
    TaskId prev = NONE;
    for (std::size_t k = 0; k < tmpl.tasks.size(); ++k) {
      const TaskId id = graph_.add_task(tmpl.task(k, rank));
      if (prev != NONE) {
        graph_.add_edge(prev, id); // the schedule: one in-order compute stream
      }
      prev = id;
    }
  }

  void add_sends(std::size_t ridx) {
    const StageTemplate& tmpl = stage_of(ridx);
    const int rank = ranks_[ridx];
    const int stage = graph_.ranks()[ridx].stage;
    // Megatron's scatter-gather optimisation sends 1/t of the activation with sequence parallelism.
    const bool sp = plan_.sequence_parallel && plan_.tp > 1;
    // Context parallelism: each CP rank sends the activation of its own b*s/cp tokens to its peer (same cp_rank).
    const double msg_bytes = static_cast<double>(plan_.micro_batch_size * model_.seq_length * model_.hidden_size) *
                             BF16_BYTES / (sp || plan_.p2p_scatter_gather ? plan_.tp : 1) / plan_.cp;
    // Receiver: the rank with the same (tp, cp, dp) coordinates on the target stage (rank classes: its representative).
    RankCoord coord = grid_.coord_of(rank);
    for (const Send& send : tmpl.sends) {
      coord.pp_rank = send.to_stage;
      const int peer = grid_.rank_of(coord);
      const int peer_idx = graph_.rank_index(peer);
      CUBOID_ASSERT(peer_idx >= 0, "P2P peer rank {} of rank {} is not materialised", peer, rank);
      const StageTemplate& to = stages_[idx(send.to_stage)];
      const std::size_t slot = idx(send.microbatch) * idx(plan_.vp) + idx(send.to_chunk);
      const std::uint32_t consumer = send.phase == Phase::Forward ? to.fwd_first[slot] : to.bwd_first[slot];
      CUBOID_ASSERT(consumer != NONE, "no consumer for send mb{} c{} s{} -> s{}", send.microbatch, send.chunk, stage,
                    send.to_stage);
      const TaskId producer = base_[ridx] + send.from;
      const TaskId target = base_[idx(peer_idx)] + consumer;
      if (peer == rank) {
        graph_.add_edge(producer, target); // pp == 1 with chunks: the next chunk is on the same rank
        continue;
      }
      const Task task{.kind = TaskKind::P2P, .phase = send.phase, .stream = Stream::PpComm, .rank = rank,
                      .peer = peer, .stage = stage, .chunk = send.chunk, .microbatch = send.microbatch,
                      .group = GroupKind::Pp, .group_size = plan_.pp, .msg_bytes = msg_bytes};
      const TaskId id = graph_.add_task(task);
      graph_.add_edge(producer, id);
      graph_.add_edge(id, target);
      if (plan_.blocking_p2p && send.from + 1 < tmpl.tasks.size()) {
        graph_.add_edge(id, producer + 1); // --- validation accuracy --- the sender's next compute waits for the send
      }
    }
  }

  // All ranks: one group per DP group (dp*cp ranks with context parallelism: Megatron reduces the gradients over the
  // data-parallel group with context parallel); rank classes: {representative} (group_size = dp*cp on the tasks).
  void add_dp_groups() {
    dp_group_of_.assign(ranks_.size(), -1);
    for (const std::vector<int>& group :
         plan_.dp_cp_size() > 1 ? grid_.all_dp_cp_groups() : std::vector<std::vector<int>>{}) {
      std::vector<int> members;
      std::copy_if(group.begin(), group.end(), std::back_inserter(members),
                   [this](int member) { return graph_.rank_index(member) >= 0; });
      if (members.empty()) {
        continue; // rank classes: DP groups without a representative
      }
      const std::int32_t group_index = graph_.add_group(members);
      for (const int member : members) {
        dp_group_of_[idx(graph_.rank_index(member))] = group_index;
      }
    }
  }

  // --- mixture of experts --- Expert-DP groups (all ranks: one per group; rank classes: {representative}).
  void add_expert_dp_groups() {
    expert_dp_group_of_.assign(ranks_.size(), -1);
    if (!model_.is_moe() || plan_.expert_dp() <= 1) {
      return;
    }
    for (const std::vector<int>& group : grid_.all_expert_dp_groups(plan_.ep)) {
      std::vector<int> members;
      std::copy_if(group.begin(), group.end(), std::back_inserter(members),
                   [this](int member) { return graph_.rank_index(member) >= 0; });
      if (members.empty()) {
        continue;
      }
      const std::int32_t group_index = graph_.add_group(members);
      for (const int member : members) {
        expert_dp_group_of_[idx(graph_.rank_index(member))] = group_index;
      }
    }
  }

  // --- mixture of experts --- One collective per chunk with experts, on the DP stream after the dense buckets (so
  // every member issues the same order). Returns the last task, or `prev` when there is none.
  TaskId add_expert_collectives(std::size_t ridx, CollectiveKind kind, double bytes_per_param, TaskId prev,
                                TaskId first_after) {
    Task task{.kind = TaskKind::Collective, .stream = Stream::DpComm, .rank = ranks_[ridx],
              .stage = graph_.ranks()[ridx].stage, .collective = kind, .group = GroupKind::ExpertDp,
              .group_index = expert_dp_group_of_[ridx], .group_size = plan_.expert_dp()};
    const StageTemplate& tmpl = stage_of(ridx);
    for (std::size_t sync = 0; sync < tmpl.expert_syncs.size(); ++sync) {
      task.chunk = tmpl.expert_syncs[sync].chunk;
      task.bucket = static_cast<int>(sync);
      task.msg_bytes = tmpl.expert_syncs[sync].params * bytes_per_param;
      const TaskId id = graph_.add_task(task);
      const TaskId after = first_after != NONE ? (sync == 0 ? first_after : NONE)
                                               : base_[ridx] + tmpl.expert_syncs[sync].last_task;
      for (const TaskId dep : {prev, after}) {
        if (dep != NONE) {
          graph_.add_edge(dep, id);
        }
      }
      prev = id;
    }
    return prev;
  }

  // One collective per bucket on the DP stream, chained so that every member issues them in the same order; bucket
  // k also waits for task after(k) (NONE: nothing). Returns the last task, or NONE without buckets.
  template <typename After>
  TaskId add_bucket_collectives(std::size_t ridx, CollectiveKind kind, double bytes_per_param, After after) {
    const std::vector<Bucket>& buckets = stage_of(ridx).buckets;
    Task task{.kind = TaskKind::Collective, .stream = Stream::DpComm, .rank = ranks_[ridx],
              .stage = graph_.ranks()[ridx].stage, .collective = kind, .group = GroupKind::Dp,
              .group_index = dp_group_of_[ridx], .group_size = plan_.dp_cp_size()};
    // ZeRO-2 reduce-scatters free the bucket's unsharded fp32 gradients (allocated by the backward tasks).
    const bool frees_grads = sharded_grads() && kind == CollectiveKind::ReduceScatter;
    TaskId prev = NONE;
    for (std::size_t bucket = 0; bucket < buckets.size(); ++bucket) {
      if (kind == CollectiveKind::AllGather && !is_gathered(buckets[bucket])) {
        continue; // ZeRO-2: the parameters are gathered once, with the last micro-batch's set of buckets
      }
      task.chunk = buckets[bucket].chunk;
      task.bucket = static_cast<int>(bucket);
      task.msg_bytes = buckets[bucket].params * bytes_per_param;
      task.phase = frees_grads ? Phase::Backward : Phase::None;
      task.microbatch = frees_grads ? buckets[bucket].microbatch : -1;
      set(task.free_at_end, MemTag::Grads, frees_grads ? FP32_GRAD_BYTES * buckets[bucket].params : 0.0);
      const TaskId id = graph_.add_task(task);
      for (const TaskId dep : {prev, after(bucket)}) {
        if (dep != NONE) {
          graph_.add_edge(dep, id);
        }
      }
      prev = id;
    }
    return prev;
  }

  void add_gradient_sync_and_optimizer(std::size_t ridx) {
    const StageTemplate& tmpl = stage_of(ridx);
    const TaskId last_compute = base_[ridx] + static_cast<TaskId>(tmpl.tasks.size() - 1);
    const bool sync = plan_.dp_cp_size() > 1;
    TaskId reduced = NONE;
    if (sharded_params()) {
      reduced = add_zero3_collectives(ridx);
    } else if (sharded_grads()) {
      // ZeRO-2: each bucket of each micro-batch's backward as soon as its last unit is done.
      reduced = add_bucket_collectives(ridx, CollectiveKind::ReduceScatter, FP32_GRAD_BYTES, [&](std::size_t bucket) {
        return base_[ridx] + tmpl.buckets[bucket].last_task;
      });
      // Two bucket buffers (DeepSpeed stage 2 overlap_comm double-buffers its reduction buckets): the backward that
      // starts filling bucket i waits until the reduce-scatter of bucket i-2 has freed its buffer, so unsharded
      // gradients stay bounded when the DP links are slower than backward. The reduce-scatters are the last
      // buckets.size() tasks, in bucket order.
      constexpr std::size_t BUCKET_BUFFERS = 2;
      const std::size_t count = tmpl.buckets.size();
      const TaskId first_scatter = reduced + 1 - static_cast<TaskId>(count);
      for (std::size_t bucket = BUCKET_BUFFERS; bucket < count; ++bucket) {
        const TaskId freed = first_scatter + static_cast<TaskId>(bucket - BUCKET_BUFFERS);
        CUBOID_ASSERT(graph_.task(freed).bucket == static_cast<int>(bucket - BUCKET_BUFFERS), "bucket order");
        graph_.add_edge(freed, base_[ridx] + tmpl.buckets[bucket].first_task);
      }
    } else if (sync) {
      // Distributed optimizer: reduce-scatter of the fp32 grads; otherwise all-reduce. overlap_grad_reduce: a bucket
      // starts once its last unit's final backward is done (Megatron's backward hooks); else after all backward.
      const bool overlap = plan_.overlap_grad_reduce;
      const bool scatter = plan_.distributed_optimizer && !plan_.all_reduce_sharded_grads;
      // fp32 main grads, or 16-bit ones for fp16 plans and --grad-reduce-in-bf16 (Plan::dp_grad_bytes).
      reduced = add_bucket_collectives(
          ridx, scatter ? CollectiveKind::ReduceScatter : CollectiveKind::AllReduce, plan_.dp_grad_bytes(),
          [&](std::size_t bucket) { return overlap ? base_[ridx] + tmpl.buckets[bucket].last_task : last_compute; });
    }
    // --- mixture of experts --- expert gradients over the expert-DP group (reduce-scatter with the distributed
    // optimizer, else all-reduce), chained after the dense buckets on the DP stream.
    const bool expert_scatter = plan_.distributed_optimizer && !plan_.all_reduce_sharded_grads;
    const TaskId expert_reduced = add_expert_collectives(
        ridx, expert_scatter ? CollectiveKind::ReduceScatter : CollectiveKind::AllReduce, FP32_GRAD_BYTES, reduced,
        plan_.overlap_grad_reduce ? NONE : last_compute);
    const Task step{.kind = TaskKind::Optimizer, .stream = Stream::Compute, .rank = ranks_[ridx],
                    .stage = graph_.ranks()[ridx].stage, .block = tmpl.optimizer_block};
    const TaskId step_id = graph_.add_task(step);
    if (expert_reduced != NONE && expert_reduced != reduced) {
      graph_.add_edge(expert_reduced, step_id);
    }
    graph_.add_edge(last_compute, step_id);
    if (reduced != NONE) {
      graph_.add_edge(reduced, step_id);
    }
    grads_final_[ridx] = reduced != NONE ? reduced : last_compute;
    optimizer_of_[ridx] = step_id;
    if (sync && plan_.distributed_optimizer && !sharded_params()) {
      // Then all-gather the updated bf16 parameter shards, bucket by bucket (ZeRO-2: one all-gather per bucket of
      // the last micro-batch's set, which covers every parameter once). overlap_param_gather: in steady state
      // that all-gather runs behind the next step's forward (Megatron --overlap-param-gather), so it starts with
      // the step here, sharing the DP links, instead of after the optimizer.
      const bool behind_forward = plan_.overlap_param_gather;
      const auto& buckets = tmpl.buckets;
      const auto first = static_cast<std::size_t>(std::find_if(buckets.begin(), buckets.end(), [this](const Bucket& b) {
                                                    return is_gathered(b);
                                                  }) - buckets.begin());
      add_bucket_collectives(ridx, CollectiveKind::AllGather, BF16_BYTES,
                             [step_id, behind_forward, first](std::size_t bucket) {
                               return bucket == first && !behind_forward ? step_id : NONE;
                             });
    }
    if (plan_.distributed_optimizer && !tmpl.expert_syncs.empty()) {
      // --- mixture of experts --- all-gather of the updated expert shards over the expert-DP group
      add_expert_collectives(ridx, CollectiveKind::AllGather, BF16_BYTES, NONE, step_id);
    }
  }

  // The embedding group's gradient all-reduce (tied_embedding_sync above), on the rank holding the embedding and
  // on its peer holding the output layer. Message: the word embedding's V/tp rows of h, in the dtype of the reduced
  // grads (DeepSpeed's BF16 optimizer: its fp32 hp grads, engine.py _exec_reduce_tied_grads). Both ranks' tasks
  // are one collective; each starts after its own rank's DP reduction and gates its optimizer.
  void add_tied_embedding_sync(std::size_t ridx) {
    const int stage = graph_.ranks()[ridx].stage;
    if (!tied_embedding_sync() || (stage != embedding_stage() && stage != head_stage())) {
      return;
    }
    const int rank = ranks_[ridx];
    RankCoord coord = grid_.coord_of(rank);
    coord.pp_rank = stage == embedding_stage() ? head_stage() : embedding_stage();
    const int peer = grid_.rank_of(coord);
    const int peer_idx = graph_.rank_index(peer);
    CUBOID_ASSERT(peer_idx >= 0, "embedding-group peer rank {} of rank {} is not materialised", peer, rank);
    const int first = stage == embedding_stage() ? rank : peer;
    const int second = stage == embedding_stage() ? peer : rank;
    // One group per pair, created by whichever of its two ranks comes first.
    auto group = embedding_group_of_.find(first);
    if (group == embedding_group_of_.end()) {
      group = embedding_group_of_.emplace(first, graph_.add_group({first, second})).first;
    }
    const double bytes = static_cast<double>(model_.vocab_size) * static_cast<double>(model_.hidden_size) / plan_.tp *
                         (plan_.all_reduce_sharded_grads ? FP32_GRAD_BYTES : plan_.dp_grad_bytes());
    const Task task{.kind = TaskKind::Collective, .stream = Stream::DpComm, .rank = rank, .stage = stage,
                    .collective = CollectiveKind::AllReduce, .group = GroupKind::Embedding,
                    .group_index = group->second, .group_size = 2, .msg_bytes = bytes};
    const TaskId id = graph_.add_task(task);
    graph_.add_edge(grads_final_[ridx], id);
    graph_.add_edge(id, optimizer_of_[ridx]);
  }

  // --- ZeRO / FSDP ---
  // ZeRO-3 (FSDP FULL_SHARD, reshard_after_forward; DeepSpeed stage 3): before compute task k (forward or backward
  // of one unit for one micro-batch) an all-gather of the unit's bf16 parameters, S = 2 P_k bytes (the gathered
  // buffer, allocated at its start and freed by compute k). Prefetch depth 1, like FSDP's forward/backward prefetch
  // with limit_all_gathers: gather k may start once compute k-2 has freed its buffer, so it overlaps compute k-1 on
  // the DP stream and at most two units (current + prefetched) are gathered at a time. After each backward task a
  // reduce-scatter of the unit's fp32 gradients, S = 4 P_k, which frees them. Gathers and reduce-scatters are
  // chained in issue order (every DP member must call them in the same order). Both share the DP stream (PyTorch FSDP
  // issues them on two NCCL streams): a pending reduce-scatter delays the next gather, which also bounds the
  // unsharded gradients waiting for reduction. Returns the last reduce-scatter.
  TaskId add_zero3_collectives(std::size_t ridx) {
    const StageTemplate& tmpl = stage_of(ridx);
    Task collective{.kind = TaskKind::Collective, .stream = Stream::DpComm, .rank = ranks_[ridx],
                    .stage = graph_.ranks()[ridx].stage, .group = GroupKind::Dp, .group_index = dp_group_of_[ridx],
                    .group_size = plan_.dp};
    TaskId prev_gather = NONE;
    TaskId prev_scatter = NONE;
    const auto link = [this](TaskId from, TaskId to) {
      if (from != NONE) {
        graph_.add_edge(from, to);
      }
    };
    for (std::size_t k = 0; k < tmpl.tasks.size(); ++k) {
      const TemplateTask& compute = tmpl.tasks[k];
      const TaskId compute_id = base_[ridx] + static_cast<TaskId>(k);
      const double params = tmpl.task_params[k];
      collective.phase = compute.phase;
      collective.chunk = compute.chunk;
      collective.microbatch = compute.microbatch;
      collective.layer = compute.layer;
      collective.block = compute.block;
      collective.bucket = static_cast<int>(k);
      collective.collective = CollectiveKind::AllGather;
      collective.msg_bytes = BF16_BYTES * params;
      collective.alloc_at_start = {};
      collective.free_at_end = {};
      set(collective.alloc_at_start, MemTag::Weights, BF16_BYTES * params);
      const TaskId gather = graph_.add_task(collective);
      link(prev_gather, gather);
      link(k >= 2 ? compute_id - 2 : NONE, gather);
      graph_.add_edge(gather, compute_id);
      prev_gather = gather;
      if (compute.phase != Phase::Backward) {
        continue;
      }
      collective.collective = CollectiveKind::ReduceScatter;
      collective.msg_bytes = FP32_GRAD_BYTES * params;
      collective.alloc_at_start = {};
      set(collective.free_at_end, MemTag::Grads, FP32_GRAD_BYTES * params);
      const TaskId scatter = graph_.add_task(collective);
      graph_.add_edge(compute_id, scatter);
      link(prev_scatter, scatter);
      prev_scatter = scatter;
    }
    return prev_scatter;
  }

  const ModelSpec& model_;
  const Plan& plan_;
  Instantiation inst_;
  RankGrid grid_;
  int m_;
  bool split_; // zero-bubble: backward split into input-gradient (Backward) and weight-gradient (WeightGrad) tasks
  TaskGraph& graph_;
  Unit layer_, layer_bwd_, embed_, embed_bwd_, head_, head_bwd_;
  Unit moe_, moe_bwd_; // --- mixture of experts ---
  std::vector<std::int32_t> expert_dp_group_of_;
  Unit layer_b_, layer_w_, embed_w_, head_b_, head_w_; // zero-bubble only
  std::vector<StageTemplate> stages_;
  std::vector<int> ranks_;       // materialised world ranks, in graph_.ranks() order
  std::vector<TaskId> base_;     // first compute task id per materialised rank
  std::vector<std::int32_t> dp_group_of_;
  std::vector<TaskId> grads_final_;  // per materialised rank: the task after which its gradients are reduced
  std::vector<TaskId> optimizer_of_; // per materialised rank: its optimizer task
  std::map<int, std::int32_t> embedding_group_of_; // embedding-stage world rank -> its embedding group
};

} // namespace

TaskGraph build_step_graph(const ModelSpec& model, const ClusterSpec& cluster, const Plan& plan,
                           Instantiation instantiation, std::size_t max_tasks) {
  TaskGraph graph(model, cluster, plan, instantiation);
  Builder(model, plan, graph).build(max_tasks);
  return graph;
}

} // namespace cuboid::model
