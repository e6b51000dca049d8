// Plan: how a training step is laid out on the rank grid (DP x TP x PP, micro-batches, schedule, memory savers).
// Names follow Megatron-LM's flags (see tools/ for the aliases).
#pragma once

#include "model/gpu_spec.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace cuboid::model {

// ZbH1 / ZbV: zero-bubble schedules (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024, arXiv 2401.10241):
// the backward is split into input-gradient (B) and weight-gradient (W) tasks. ZbH1 keeps vp = 1; ZbV needs vp = 2,
// the two model chunks of a rank placed in a V (chunk 0 on virtual stage s, chunk 1 on virtual stage 2pp-1-s).
enum class Schedule { GPipe, OneFOneB, Interleaved, ZbH1, ZbV };
enum class Recompute { None, Selective, Full };
// --- context parallelism --- How attention exchanges K/V over the CP group (Megatron --cp-comm-type, Transformer
// Engine's cp_comm_type, transformer_engine/pytorch/attention/dot_product_attention/context_parallel.py):
//   P2P       ring attention, AttnFuncWithCPAndKVP2P: K/V blocks circulated, each exchange overlapped with an
//             attention step (Megatron's default);
//   AllGather AttnFuncWithCPAndKVAllGather (Llama 3 paper, arXiv 2407.21783 sec. 3.3.2): K/V all-gathered once per
//             layer, exposed; backward gathers again and reduce-scatters dK/dV;
//   A2A       DeepSpeed-Ulysses (Jacobs et al. 2023, arXiv 2309.14509), AttnFuncWithCPAndQKVOA2A: all-to-alls turn
//             the sequence split of Q, K, V into a head split (heads/tp divisible by cp), attention over the whole
//             sequence, and an all-to-all of the output back; exposed.
enum class CpCommType { P2P, AllGather, A2A };

struct Plan {
  int tp = 1;
  int pp = 1;
  int dp = 1;
  int vp = 1;                       // model chunks per pipeline rank; > 1: interleaved, or 2 with zb-v (V shape)
  std::int64_t micro_batch_size = 1;
  std::int64_t global_batch_size = 1;
  Schedule schedule = Schedule::OneFOneB;
  Recompute recompute = Recompute::None;
  bool sequence_parallel = false;
  bool distributed_optimizer = false;   // ZeRO-1 style optimizer-state sharding over DP (Megatron)
  Precision precision = Precision::Bf16;
  bool overlap_grad_reduce = true;      // DP gradient all-reduce overlaps backward (bucketed)
  // Megatron --grad-reduce-in-bf16 (Megatron-Core DistributedDataParallelConfig.grad_reduce_in_fp32 = false; NeMo's
  // optim.grad_sync_dtype: bf16): the main-grad buffer and its DP reduction are bf16 instead of fp32. ZeRO 0/1 with
  // bf16 or fp8 precision only (plan.cpp validate).
  bool grad_reduce_in_bf16 = false;
  // Megatron --overlap-param-gather (distributed optimizer): the bf16 parameter all-gather of step i+1 runs behind
  // step i+1's forward instead of after the optimizer; in a one-step graph it starts with the step.
  bool overlap_param_gather = false;
  // Megatron --tp-comm-overlap (Transformer Engine userbuffers): each TP all-gather / reduce-scatter is split into tp
  // chunks pipelined with its GEMM; costed in cost_model.cpp block_cost().
  bool tp_comm_overlap = false;
  // Megatron-LM's asynchronous grad-input reduction (2022 on, --async-tensor-model-parallel-allreduce, then always on
  // in Megatron-Core's LinearWithGradAccumulationAndAsyncCommunication): in the backward of a column-parallel linear
  // (QKV, FC1) the all-reduce / reduce-scatter of the input gradient runs while the weight-gradient GEMM computes;
  // costed in cost_model.cpp overlapped_tp_comm_s(). Simulation only: the CPU/CUDA runtimes reduce synchronously.
  bool async_tp_grad_reduce = false;
  // DeepSpeed's BF16_Optimizer (BLOOM, Megatron-DeepSpeed): optimizer state sharded over DP like ZeRO-1, but the
  // fp32 gradient buffer is all-reduced (engine.py allreduce_gradients -> buffered_allreduce_fallback on
  // get_grads_for_reduction()), not reduce-scattered, each 500M-element bucket cast to the communication dtype,
  // bf16 for bf16 runs with ZeRO stage 0 (engine.py communication_data_type, DeepSpeed @37011a92, the commit
  // BLOOM's training rolled back to). Only meaningful with distributed_optimizer.
  bool all_reduce_sharded_grads = false;
  // Fused (FlashAttention-style) attention core; false = Megatron's pre-2022 unfused path (QK^T and AV batched GEMMs
  // with the s x s scores through HBM: fused scale-mask-softmax, dropout). Costed in cost_model.cpp.
  bool flash_attention = true;
  double grad_bucket_bytes = 40e6 * 4;  // Megatron default bucket: 40M parameters (fp32 main grads)
  // Uneven pipelines (Megatron --decoder-first/last-pipeline-num-layers); 0 = even split.
  int first_stage_layers = 0;
  int last_stage_layers = 0;
  // Megatron-Core --account-for-embedding-in-pipeline-split / --account-for-loss-in-pipeline-split
  // (TransformerConfig.account_for_embedding_in_pipeline_split / account_for_loss_in_pipeline_split): the input
  // embedding / the loss (output layer + cross-entropy) counts as one transformer layer when the layers are split
  // over pipeline stages and model chunks (pipeline_slot_layers below). Not combined with first/last_stage_layers.
  bool account_for_embedding_in_pipeline_split = false;
  bool account_for_loss_in_pipeline_split = false;

  // --- mixture of experts ---
  // Expert parallelism as Megatron-core (--expert-model-parallel-size): the E routed experts of a MoE layer are split
  // over ep ranks carved from the data-parallel group (ep | dp, ep | E); each holds E/ep experts, sharded over tp like
  // the dense MLP (expert tensor parallel = tp). Tokens reach their experts by an all-to-all over the EP group; expert
  // gradients are reduced over the dp/ep expert-data-parallel ranks, dense ones over dp.
  int ep = 1;
  // Load imbalance F >= 1: the busiest expert receives F x the mean tokens (mean = tokens * top_k / E); it sizes the
  // expert GEMMs and the all-to-all buffers of every EP rank (the slowest rank sets the pace). 1 = perfect balance.
  double moe_imbalance = 1.0;

  // --- context parallelism ---
  // Megatron --context-parallel-size: each sequence is split over cp ranks (load-balanced causal split into 2*cp
  // chunks, rank i holding chunks i and 2cp-1-i); attention exchanges K/V as cp_comm_type says. Rank order
  // tp-cp-dp-pp.
  // Not combined with mixture of experts yet (plan validation refuses cp > 1 for MoE models).
  int cp = 1;
  CpCommType cp_comm_type = CpCommType::P2P;

  [[nodiscard]] int world_size() const { return tp * cp * dp * pp; }
  /// Ranks that reduce each gradient (and shard the distributed optimizer): Megatron's data-parallel group with
  /// context parallel, dp * cp.
  [[nodiscard]] int dp_cp_size() const { return dp * cp; }

  // --- ZeRO / FSDP ---
  // ZeRO stage (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
  // section 5 and Fig. 1), sharding over the DP group: 0 none; 1 optimizer state (P_os, the same as
  // distributed_optimizer); 2 + gradients (P_os+g: reduce-scattered per micro-batch, bucketed, behind backward);
  // 3 + parameters (P_os+g+p, PyTorch FSDP FULL_SHARD / DeepSpeed stage 3: each layer's bf16 parameters are
  // all-gathered before its forward and again before its backward, the next layer's gather prefetched on the DP
  // stream, and its gradients reduce-scattered per layer). Set it with set_zero_stage(), which keeps
  // distributed_optimizer == (zero_stage >= 1); read it with get_zero_stage().
  int zero_stage = 0;
  // --- validation accuracy ---
  /// Pipeline sends block the sender's compute stream until they complete (SC21-era Megatron-LM
  /// p2p_communication._communicate waits on its batch_isend_irecv requests before the next micro-batch; DeepSpeed's
  /// PipelineEngine sends with blocking torch.distributed send). false: Megatron-Core, sends on their own stream.
  bool blocking_p2p = false;
  /// Megatron-LM's scatter/gather optimisation (Narayanan et al. SC21 section 4.1; --no-scatter-gather-tensors-in-
  /// pipeline turns it off): each TP rank sends 1/tp of the activation between stages and the receiver all-gathers
  /// it over NVLink (not modelled: ~1/8 of the send's bytes at NVLink speed). Sequence parallelism splits it anyway.
  bool p2p_scatter_gather = false;

  /// Bytes per gradient element in the DP reduction of a ZeRO 0/1 plan: 2 for fp16 (Megatron-LM's arguments.py forces
  /// --accumulate-allreduce-grads-in-fp32 only for bf16), with grad_reduce_in_bf16, and for DeepSpeed's BF16
  /// optimizer (all_reduce_sharded_grads: bf16 communication dtype); else 4 (fp32 main grads).
  [[nodiscard]] double dp_grad_bytes() const {
    return precision == Precision::Fp16 || grad_reduce_in_bf16 || all_reduce_sharded_grads ? 2.0 : 4.0;
  }

  /// The effective ZeRO stage: zero_stage, or 1 for a plan that only sets distributed_optimizer.
  [[nodiscard]] int get_zero_stage() const { return zero_stage > 0 ? zero_stage : (distributed_optimizer ? 1 : 0); }

  /// Micro-batches per step per DP replica: global / (micro * dp).
  [[nodiscard]] std::int64_t num_microbatches() const { return global_batch_size / (micro_batch_size * dp); }
  /// --- mixture of experts --- Size of the expert-data-parallel group (ranks holding the same experts): dp / ep.
  [[nodiscard]] int expert_dp() const { return dp / ep; }
  /// True when the embedding and/or the loss count as a layer in the pipeline split (Megatron-Core's flags).
  [[nodiscard]] bool accounts_in_pipeline_split() const {
    return account_for_embedding_in_pipeline_split || account_for_loss_in_pipeline_split;
  }
};

std::string to_string(Schedule schedule);
/// True for the zero-bubble schedules (zb-h1, zb-v), whose step graph splits every backward into B and W tasks.
bool splits_backward(Schedule schedule);
std::string to_string(Recompute recompute);
std::string to_string(Precision precision);
std::string to_string(CpCommType type);
Schedule parse_schedule(const std::string& text, const std::string& where);
Recompute parse_recompute(const std::string& text, const std::string& where);
Precision parse_precision(const std::string& text, const std::string& where);
/// "p2p", "allgather" (also Transformer Engine's spelling "all_gather") or "a2a"; "a2a+p2p" (hierarchical CP) is
/// refused with the valid names.
CpCommType parse_cp_comm_type(const std::string& text, const std::string& where);

/// Largest ZeRO stage (3 = parameters sharded, FSDP).
constexpr int MAX_ZERO_STAGE = 3;
/// The one place that sets the ZeRO stage: zero_stage = stage and distributed_optimizer = (stage >= 1). Throws
/// InputError naming `where` and `field` when stage is not 0..3.
void set_zero_stage(Plan& plan, int stage, const std::string& where, const std::string& field);

/// Number of layers held by each pipeline stage (size pp), honouring first/last overrides and the embedding/loss
/// accounting (the sum over the stage's model chunks, see pipeline_slot_layers).
/// Throws InfeasibleError when layers cannot be split as asked.
std::vector<int> layers_per_stage(const Plan& plan, std::int64_t num_layers);
/// Same, with `where` (file or "command line") prefixed to error messages.
std::vector<int> layers_per_stage(const Plan& plan, std::int64_t num_layers, const std::string& where);

/// Layers [first_layer, first_layer + num_layers) of one model chunk.
struct LayerRange {
  int first_layer = 0;
  int num_layers = 0;
};
/// Megatron-Core's embedding/loss-aware split (plan.accounts_in_pipeline_split()): S = num_layers + e + l layer slots
/// (e = 1 with account_for_embedding_in_pipeline_split, l = 1 with account_for_loss_in_pipeline_split) split evenly
/// over the pp * vp virtual stages, P = S / (pp * vp) slots each; virtual stage v (in model order) holds slots
/// [v P, (v + 1) P); the embedding is slot 0 (when e = 1), layer i slot e + i, the loss the last slot (when l = 1).
/// So virtual stage v holds layers [max(v P, e) - e, min((v + 1) P, e + L) - e).
/// Worked example, Llama 3.1 405B, L = 126, pp = 8, vp = 8, both flags: S = 128, P = 2; virtual stage 0 holds the
/// embedding and layer 0, virtual stage 63 layer 125 and the loss, every other one 2 layers; pipeline stage 0 (virtual
/// stages 0, 8, ..., 56) holds 15 layers, stage 7 15, the others 16.
/// Throws InfeasibleError (naming `where` when not empty) when the slots do not split (Megatron-Core
/// TransformerConfig.__post_init__: S divisible by pp, and S / pp by vp), when combined with first/last_stage_layers
/// (Megatron refuses it too) and when a chunk would hold no transformer layer (Megatron allows it; cuboid does not).
LayerRange pipeline_slot_layers(const Plan& plan, std::int64_t num_layers, int virtual_stage,
                                const std::string& where = "");

struct ModelSpec;
struct ClusterSpec;
/// Checks plan against model and cluster: tp divides heads and query groups, tp*pp*dp == num_gpus, global batch
/// divisible by micro*dp, vp valid for the schedule, layers divisible... Throws InputError for malformed values
/// (non-positive sizes) and InfeasibleError for well-formed plans that cannot run, both naming the field.
void validate(const Plan& plan, const ModelSpec& model, const ClusterSpec& cluster, const std::string& where);

} // namespace cuboid::model
