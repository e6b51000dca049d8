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

/// Parameters of the gradient units of one chunk in backward order: head (final norm + output layer), last layer ..
/// first layer, embedding (the order the chunk's gradients become final).
std::vector<double> chunk_grad_units(const ModelSpec& model, const Plan& plan, const ChunkLayout& chunk,
                                     bool stage_has_embedding);
/// DP gradient buckets over the units of one chunk, as Megatron's DistributedDataParallel forms them (buckets per
/// model chunk, filled in reverse parameter order, closed once they hold >= grad_bucket_bytes / 4 fp32 grads:
/// 40M parameters by default). Returns the index of each bucket's last unit.
std::vector<std::size_t> grad_bucket_ends(const Plan& plan, const std::vector<double>& unit_params);

/// Bytes per parameter of weights + grads + optimizer: 18 (Megatron mixed precision: bf16 param 2, fp32 main grad 4,
/// fp32 master param 4, Adam m and v 8), or 6 + 12/dp with the distributed optimizer (ZeRO-1); ZeRO-2
/// 2 + 16/dp; ZeRO-3 18/dp (Rajbhandari et al. 2020, Fig. 1, with fp32 grads).
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

} // namespace cuboid::model
