// Memory model: bytes per rank for static state (weights, grads, optimizer, comm buffers), stored activations per
// layer / embedding / head per micro-batch, and transient workspaces. The step builder attaches these numbers to
// tasks as alloc/free effects; the peak comes from replaying them (DESIGN.md "Memory"), never from a formula here.
#pragma once

#include "model/model_spec.hpp"
#include "model/plan.hpp"
#include "model/schedule.hpp"
#include "model/task_graph.hpp"

#include <vector>

namespace cuboid::model {

struct MemoryOptions {
  /// Flash attention (Dao et al. 2022; Megatron --use-flash-attn / Transformer Engine, the modern default) stores no
  /// s x s softmax / dropout tensors: the 5as/h term of Korthikanti et al. 2022 Table 2 drops out. false gives the
  /// paper's formulas exactly.
  bool flash_attention = true;
  /// cuBLAS workspace kept by the process (CUBLAS_WORKSPACE_CONFIG=:4096:8 x 8 ~ 32 MiB on Hopper). Assumption.
  double cublas_workspace_bytes = 32.0 * 1024 * 1024;
  /// NCCL buffers per communicator of size > 1 the rank belongs to (TP, DP, PP): NCCL_BUFFSIZE 4 MiB x 2 protocols
  /// x ~4 channels. Assumption.
  double nccl_bytes_per_communicator = 32.0 * 1024 * 1024;
};

/// Parameters of one transformer layer held by one TP rank: column-parallel weights and biases (QKV, FC1) and
/// row-parallel weights (proj, FC2) divided by tp; norms and the row-parallel biases replicated.
double layer_params_per_tp_rank(const ModelSpec& model, int tp);
/// Word embedding (vocab-parallel, /tp) plus the replicated learned position embedding.
double embedding_params_per_rank(const ModelSpec& model, const Plan& plan);
/// Final norm plus the output layer (/tp); with tied embeddings the output layer is the embedding itself, counted
/// here only when the embedding lives on another stage (`stage_has_embedding` false): Megatron's last-stage copy.
double head_params_per_rank(const ModelSpec& model, const Plan& plan, bool stage_has_embedding);
/// Parameters held by one rank of pipeline stage `stage`: its layers, the vocab-parallel word embedding (/tp) and the
/// replicated position embedding on the first stage, the final norm and the output layer (/tp) on the last stage.
/// With tied embeddings and pp > 1 the last stage holds its own copy of the word embedding (Megatron).
double params_per_rank(const ModelSpec& model, const Plan& plan, int stage);

/// --- mixture of experts ---
/// Routed-expert parameters of one MoE layer held by one rank: E/ep experts, each sharded over tp like the dense MLP
/// (column-parallel fc1, row-parallel fc2, fc2 bias replicated). Reduced over the expert-data-parallel group.
double moe_expert_params_per_rank(const ModelSpec& model, const Plan& plan);
/// Parameters of one MoE layer held by one rank: layer_params_per_tp_rank without the dense MLP, plus the router
/// (C x E, replicated over TP as Megatron's TopKRouter), the shared experts (/tp) and moe_expert_params_per_rank.
double moe_layer_params_per_rank(const ModelSpec& model, const Plan& plan);
/// Parameters of global layer `layer` on one rank: the MoE or the dense count.
double layer_params_on_rank(const ModelSpec& model, const Plan& plan, std::int64_t layer);
/// Routed-expert parameters of a chunk's MoE layers on one rank (their gradients go to the expert-DP group; the
/// rest of the chunk's gradients are in chunk_grad_units).
double chunk_expert_params(const ModelSpec& model, const Plan& plan, const ChunkLayout& chunk);
/// Expert parameters held by one rank of `stage` (all its chunks).
double expert_params_per_rank(const ModelSpec& model, const Plan& plan, int stage);
/// Activations one MoE layer stores for one micro-batch: the dense layer's attention half, the router's fp32
/// probabilities (4 T E), the dispatched rows (2 R h, R = moe_imbalance * T * top_k), the expert fc1 and activation
/// outputs (2 R (F_e (x2 gated) + F_e) / t) and the shared experts' (as a dense MLP of width shared * F_e).
double moe_layer_activation_bytes(const ModelSpec& model, const Plan& plan, const MemoryOptions& options = {});
/// Transient bytes of one MoE layer's backward: the dense layer's recompute part, the all-to-all send and receive
/// buffers of the gradients (2 x 2 R h) and the widest expert activation gradient (2 R F_e (x2 gated) / t).
double moe_layer_backward_workspace_bytes(const ModelSpec& model, const Plan& plan, const MemoryOptions& options = {});

/// Parameters of the gradient units of one chunk in backward order: head (final norm + output layer), last layer ..
/// first layer, embedding (the order the chunk's gradients become final). MoE layers count without their routed
/// experts (those are reduced over the expert-DP group).
std::vector<double> chunk_grad_units(const ModelSpec& model, const Plan& plan, const ChunkLayout& chunk,
                                     bool stage_has_embedding);
/// DP gradient buckets over the units of one chunk, as Megatron's DistributedDataParallel forms them (buckets per
/// model chunk, filled in reverse parameter order, closed once they hold >= grad_bucket_bytes / 4 fp32 grads:
/// 40M parameters by default). Returns the index of each bucket's last unit.
std::vector<std::size_t> grad_bucket_ends(const Plan& plan, const std::vector<double>& unit_params);

/// Bytes per parameter of weights + grads + optimizer: 18 (Megatron mixed precision: bf16 param 2, fp32 main grad 4,
/// fp32 master param 4, Adam m and v 8), or 6 + 12/dp with the distributed optimizer (ZeRO-1); ZeRO-2
/// 2 + 16/dp; ZeRO-3 18/dp (Rajbhandari et al. 2020, Fig. 1, with fp32 grads). Expert parameters of MoE models:
/// 6 + 12/(dp/ep) with the distributed optimizer (static_memory() applies it).
double static_bytes_per_param(const Plan& plan);
/// RankInfo::static_bytes of a rank on `stage`: Weights, Grads, Optimizer, Workspace (cuBLAS), CommBuffers (NCCL).
MemBytes static_memory(const ModelSpec& model, const Plan& plan, int stage, const MemoryOptions& options = {});

/// Activation bytes one layer stores from forward to backward for one micro-batch on one rank (Korthikanti et al.
/// 2022 Table 2, generalised to GQA and gated MLPs; see memory_model.cpp).
double layer_activation_bytes(const ModelSpec& model, const Plan& plan, const MemoryOptions& options = {});
/// Transient bytes of one layer's backward: recomputed activations (full: the whole layer; selective: the softmax
/// tensors unless flash attention) plus the largest activation-gradient buffer.
double layer_backward_workspace_bytes(const ModelSpec& model, const Plan& plan, const MemoryOptions& options = {});
/// Embedding activations per micro-batch (first virtual stage): the dropout mask, 1 byte per element.
double embedding_activation_bytes(const ModelSpec& model, const Plan& plan);
/// Head activations per micro-batch (last virtual stage): final-norm and output-layer inputs plus the fp32 logits
/// kept by the cross-entropy for its backward (4 b s V / t).
double head_activation_bytes(const ModelSpec& model, const Plan& plan);
/// Transient bytes of the head backward: the bf16 gradient of the logits (2 b s V / t).
double head_backward_workspace_bytes(const ModelSpec& model, const Plan& plan);

// --- context parallelism ---
/// The CP exchange's buffers alive during a layer's attention (0 when cp = 1), by Plan::cp_comm_type, with one K/V
/// block = K and V of the rank's b*s/cp tokens (kv/t wide, bf16): p2p forward 2 blocks (double-buffered receive),
/// backward 4 (K/V and dK/dV); allgather forward the gathered K/V (cp blocks), backward those and the whole-sequence
/// dK/dV (2 cp blocks); a2a the all-to-all's output buffer, Q/K/V (forward) or dQ/dK/dV (backward) of the rank's
/// tokens. Included in the layer workspaces.
double cp_comm_buffer_bytes(const ModelSpec& model, const Plan& plan, bool backward);
// --- zero-bubble schedules ---
/// What a deferred weight-gradient (W) task needs from its B task until it runs (Qi et al. 2024, section 2: W needs
/// the inputs of the linear layers and the gradients of their outputs). `kept_bytes` is the part of the stored
/// forward activations (layer_activation_bytes / head_activation_bytes) that B cannot free; `new_bytes` is what B
/// allocates for W: the output gradients dY of the wgrad GEMMs plus, with full recompute, the recomputed inputs.
struct WeightGradPending {
  double kept_bytes = 0.0;
  double new_bytes = 0.0;
};
/// One layer's pending W bytes per micro-batch on one rank: inputs X of QKV, proj, FC1, FC2 (2T(h/s + q/t + h/s +
/// F/t), s = t with SP else 1) and output gradients (2T((q + 2kv)/t + h + fc1_out/t + h)), bf16.
WeightGradPending layer_weight_grad_pending(const ModelSpec& model, const Plan& plan, const MemoryOptions& options = {});
/// The head's: the output-layer input (2Th/s, kept) and the bf16 logits gradient (2TV/t, new).
WeightGradPending head_weight_grad_pending(const ModelSpec& model, const Plan& plan);

} // namespace cuboid::model
