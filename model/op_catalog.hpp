// Op catalog: the kernel-level ops of one transformer layer, the embedding and the output head, for one rank (one TP
// shard, Megatron tensor parallelism with optional sequence parallelism), with FLOPs and HBM bytes, plus the closed
// forms of the model / hardware FLOPs of a training step (Korthikanti et al. 2022; Narayanan et al. SC21 eq. 3).
#pragma once

#include "model/model_spec.hpp"
#include "model/plan.hpp"
#include "model/task_graph.hpp"

namespace cuboid::model {

/// The compute blocks of one training step, each for one micro-batch on one rank. Block and op names:
///   layer.fwd  ln1 [ln1.allgather] qkv attn proj proj.{allreduce|reducescatter} bda1 ln2 [ln2.allgather] fc1 act
///              fc2 fc2.{allreduce|reducescatter} bda2
///   layer.bwd  [recomputed forward ops, recompute=true] bda2.bwd [fc2.allgather] fc2.dgrad fc2.wgrad act.bwd
///              fc1.dgrad fc1.wgrad fc1.{allreduce|reducescatter} ln2.bwd bda1.bwd [proj.allgather] proj.dgrad
///              proj.wgrad attn.bwd qkv.dgrad qkv.wgrad qkv.{allreduce|reducescatter} ln1.bwd
///   embed.fwd  embed [pos_embed] embed.{allreduce|reducescatter}     embed.bwd [embedding.allgather] embedding
///   head.fwd   ln_f [logits.allgather] logits loss [loss.allreduce]
///   head.bwd   loss logits.dgrad logits.wgrad logits.{allreduce|reducescatter} ln_f.bwd
/// (exec/ recognises the embedding and head blocks by the op names "embed"/"embedding" and "logits"/"loss".)
/// No TpCollective ops when tp == 1. Sizes: b = micro-batch, s = sequence, h = hidden, t = tp.
/// Context parallelism (cp > 1): every op handles the rank's b*s/cp tokens, and each attention op ("attn",
/// "attn.bwd", the selective-recompute "attn") becomes, by Plan::cp_comm_type,
///   p2p        cp ring steps, "attn.cp_ring" (OpKind::CpRing, K/V exchange; backward "attn.bwd.cp_ring" with dK/dV)
///              before each of the first cp-1 of them;
///   allgather  attn.cp_allgather (OpKind::CpCollective) and two chunk attentions; backward attn.bwd.cp_allgather,
///              two chunk backwards, attn.bwd.cp_reducescatter;
///   a2a        attn.cp_a2a.qkv, attn over heads/cp, attn.cp_a2a.out; backward attn.bwd.cp_a2a.out_dout, attn.bwd,
///              attn.bwd.cp_a2a.dqkv (all-to-alls, OpKind::CpCollective).
struct StepBlocks {
  OpBlock layer_fwd;
  OpBlock layer_bwd;
  OpBlock embed_fwd;
  OpBlock embed_bwd;
  OpBlock head_fwd;
  OpBlock head_bwd;
  // --- mixture of experts --- (empty for dense models) The layers model.is_moe_layer(): the dense layer's ops up
  // to ln2, then
  //   moe.fwd  router router.topk [router.allgather] dispatch.alltoall expert.fc1 expert.act expert.fc2
  //            [expert.fc2.allreduce] combine.alltoall [shared.fc1 shared.act shared.fc2 shared.fc2.allreduce] bda2
  //   moe.bwd  mirrors it: combine.alltoall (gradients back to the experts) ... dispatch.alltoall ... router.dgrad
  // The expert GEMMs run E/ep local experts (batch) of moe_imbalance * tokens * top_k * ep / E rows each: the rows
  // of the busiest EP rank. EpCollective ops carry the per-rank all-to-all buffer (those rows x h, bf16).
  OpBlock moe_layer_fwd;
  OpBlock moe_layer_bwd;
  // --- zero-bubble schedules ---
  // The backward blocks split into input gradient (B: every op but the weight-gradient GEMMs, so recompute, dgrad
  // GEMMs, attention and norm backward, TP collectives) and weight gradient (W: the *.wgrad GEMMs). The embedding
  // backward is a weight gradient only (nothing flows further back): it is all W. B + W hold exactly the ops of the
  // unsplit block, so their FLOPs add up to it. Names "<unit>.igrad.bwd" / "<unit>.wgrad.bwd".
  OpBlock layer_bwd_input;
  OpBlock layer_bwd_weight;
  OpBlock head_bwd_input;
  OpBlock head_bwd_weight;
  OpBlock embed_bwd_weight;
};

/// Blocks for `model` under `plan` (tp, sequence_parallel, micro_batch_size, recompute, precision).
StepBlocks make_step_blocks(const ModelSpec& model, const Plan& plan);

/// The optimizer step of a rank updating `num_params` parameters (its shard with the distributed optimizer):
/// one memory-bound "adam" op (bytes per parameter in op_catalog.cpp).
OpBlock make_optimizer_block(double num_params);

/// Forward GEMM + attention FLOPs of one layer for one token (unsharded): 2h(q + 2kv) + 2qh + 2h*F*(2 if gated)
/// + 2Fh + 4sq, with q / kv the query / key widths and F the FFN size.
double layer_forward_flops_per_token(const ModelSpec& model);
/// --- mixture of experts --- Forward FLOPs of one MoE layer per token (unsharded): the attention part of
/// layer_forward_flops_per_token, the router 2hE and (top_k + shared) expert MLPs of F_e. This is Megatron-LM's
/// num_floating_point_operations (megatron/training/training.py: the MLP term times moe_router_topk plus the shared
/// experts) with the router GEMM added.
double moe_layer_forward_flops_per_token(const ModelSpec& model);
/// Forward FLOPs of the output layer (logits GEMM) per token: 2hV.
double logits_forward_flops_per_token(const ModelSpec& model);

/// Model FLOPs of one step summed over all ranks (no recompute): 3 * tokens * (L * layer + logits). For a GPT shape
/// (F = 4h, MHA) this is Korthikanti et al. 2022's 72 B s L h^2 (1 + s/(6h) + V/(12 L h)).
double model_flops_per_step(const ModelSpec& model, const Plan& plan);
/// Hardware FLOPs (with recompute): full adds one forward of the layers (not of the logits): Narayanan et al. SC21
/// eq. 3, 96 B s L h^2 (1 + s/(6h) + V/(16 L h)); selective adds the attention core (QK^T, AV) forward only.
double hw_flops_per_step(const ModelSpec& model, const Plan& plan);

} // namespace cuboid::model
