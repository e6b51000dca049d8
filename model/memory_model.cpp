// Memory model implementation (see memory_model.hpp). Activation formulas: Korthikanti et al. 2022, "Reducing
// Activation Recomputation in Large Transformer Models", Table 2 and section 4; static state: Rajbhandari et al. 2020
// (ZeRO, section 3.1: 2 + 2 + 12 bytes per parameter) as Megatron implements it (fp32 main grads, so 2 + 4 + 12),
// and the Megatron-Core distributed optimizer docs (master params and Adam states sharded over DP).
#include "model/memory_model.hpp"

#include "model/errors.hpp"

#include <algorithm>

namespace cuboid::model {

namespace {

constexpr double BF16_BYTES = 2.0;
constexpr double FP32_BYTES = 4.0;
constexpr double FP8_BYTES = 1.0;          // FP8 (E4M3) copies of GEMM inputs saved by Transformer Engine
constexpr double MASK_BYTES = 1.0;          // dropout masks are stored as bytes (Korthikanti et al. 2022, 4.1)
constexpr double WEIGHT_BYTES = 2.0;        // bf16 model parameters
constexpr double GRAD_BYTES = 4.0;          // fp32 main grads (Megatron accumulates in fp32)
constexpr double OPTIMIZER_BYTES = 12.0;    // fp32 master params 4 + Adam m 4 + v 4

double as_d(std::int64_t value) { return static_cast<double>(value); }

double norm_params(const ModelSpec& model) {
  return model.norm == NormKind::LayerNorm ? 2.0 * as_d(model.hidden_size) : as_d(model.hidden_size);
}

// Korthikanti et al. 2022 Table 2, per layer per micro-batch, in bytes (T = s*b tokens, 2-byte activations):
//   replicated over TP (divided by t only with sequence parallelism): two norm inputs 4Th, QKV input 2Th, FC1 input
//   2Th, two dropout masks 2Th                                                       = 10 Th
//   sharded over TP: Q 2Tq, K and V 2T*kv each, projection input 2Tq, FC1 output 2T*F (x2 gated), FC2 input 2T*F
//                                                              = 24 Th for MHA and F = 4h
//   attention core (sharded): softmax output 2as^2b, its dropout mask as^2b, dropout output 2as^2b = 5 a s^2 b
// so no TP: sbh(34 + 5as/h); TP: sbh(10 + 24/t + 5as/(ht)); TP + SP: sbh(34/t + 5as/(ht)).
struct LayerActivations {
  double replicated = 0.0;
  double sharded = 0.0;
  double attention_core = 0.0;
};

// Tokens of one micro-batch held by a rank: b*s, or b*s/cp with context parallelism (each CP rank keeps the
// activations of its own sequence chunks only; Megatron-Core docs "Context parallelism": activations / cp).
double rank_tokens(const ModelSpec& model, const Plan& plan) {
  return as_d(model.seq_length) * as_d(plan.micro_batch_size) / plan.cp;
}

LayerActivations layer_parts(const ModelSpec& model, const Plan& plan) {
  const double tokens = rank_tokens(model, plan);
  const double h = as_d(model.hidden_size);
  const double q = as_d(model.q_width());
  const double kv = as_d(model.kv_width());
  const double f = as_d(model.ffn_hidden_size);
  const double fc1_out = model.gated_mlp ? 2.0 * f : f;
  const double t = plan.tp;
  const bool sp = plan.sequence_parallel && plan.tp > 1;
  LayerActivations parts;
  if (plan.precision == Precision::Fp8) {
    // FP8 (Transformer Engine, default recipe: GEMMs in FP8, attention in 16 bit). TE's Linear / LayerNormLinear /
    // LayerNormMLP save the FP8 cast of a GEMM input for the wgrad GEMM instead of the 16-bit tensor
    // (transformer_engine/pytorch/module/linear.py, layernorm_linear.py, layernorm_mlp.py: ctx.save_for_backward of
    // inputmat / ln_out / gelu_out after cast_to_fp8). Stored in FP8: the QKV and FC1 inputs (the norm outputs; the
    // norm inputs stay 16 bit for the norm backward) and the FC2 input. The projection input is the attention output
    // O, which the fused attention keeps in 16 bit for its own backward; the projection saves an FP8 copy on top.
    // Per layer: replicated 2*2Th + 2*1Th + 2Th masks; sharded 2T(q + 2kv) Q/K/V + (2 + 1)Tq O + 2T fc1_out + 1T F.
    parts.replicated = tokens * h * (2.0 * BF16_BYTES + 2.0 * FP8_BYTES + 2.0 * MASK_BYTES) / (sp ? t : 1.0);
    parts.sharded = tokens * (BF16_BYTES * (q + 2.0 * kv + fc1_out) + (BF16_BYTES + FP8_BYTES) * q + FP8_BYTES * f) / t;
  } else {
    parts.replicated = tokens * h * (4.0 * BF16_BYTES + 2.0 * MASK_BYTES) / (sp ? t : 1.0);
    parts.sharded = tokens * BF16_BYTES * (2.0 * q + 2.0 * kv + fc1_out + f) / t;
  }
  parts.attention_core = 5.0 * as_d(model.num_attention_heads) * as_d(model.seq_length) * tokens / t;
  return parts;
}

} // namespace

double layer_params_per_tp_rank(const ModelSpec& model, int tp) {
  CUBOID_ASSERT(tp > 0, "tp={}", tp);
  const double h = as_d(model.hidden_size);
  const double qkv_out = as_d(model.q_width()) + 2.0 * as_d(model.kv_width());
  const double f = as_d(model.ffn_hidden_size);
  const double fc1_out = model.gated_mlp ? 2.0 * f : f;
  const double bias = model.linear_bias ? 1.0 : 0.0;
  // column-parallel: QKV, FC1 (weights and biases); row-parallel: proj, FC2 (weights only).
  const double sharded = h * qkv_out + bias * qkv_out + as_d(model.q_width()) * h + h * fc1_out + bias * fc1_out +
                         f * h;
  const double replicated = 2.0 * norm_params(model) + 2.0 * bias * h; // norms, proj and FC2 biases
  return sharded / tp + replicated;
}

double embedding_params_per_rank(const ModelSpec& model, const Plan& plan) {
  const double h = as_d(model.hidden_size);
  const double position = model.learned_position_embedding ? as_d(model.seq_length) * h : 0.0; // replicated
  return as_d(model.vocab_size) * h / plan.tp + position;
}

double head_params_per_rank(const ModelSpec& model, const Plan& plan, bool stage_has_embedding) {
  // Untied: the output layer. Tied on another stage than the embedding: Megatron keeps a copy of the word
  // embedding on the last stage and all-reduces its gradient with the first stage.
  const bool output_layer = !model.tied_embeddings || !stage_has_embedding;
  return norm_params(model) + (output_layer ? as_d(model.vocab_size) * as_d(model.hidden_size) / plan.tp : 0.0);
}

// --- mixture of experts ---
namespace {
// Dense-layout MLP of width f on one TP rank: fc1 (x2 gated) and its bias column-parallel, fc2 row-parallel with
// its bias replicated.
double mlp_params_per_tp_rank(const ModelSpec& model, double f, int tp) {
  const double h = as_d(model.hidden_size);
  const double fc1_out = model.gated_mlp ? 2.0 * f : f;
  const double bias = model.linear_bias ? 1.0 : 0.0;
  return (h * fc1_out + bias * fc1_out + f * h) / tp + bias * h;
}
} // namespace

double moe_expert_params_per_rank(const ModelSpec& model, const Plan& plan) {
  const double local_experts = as_d(model.num_experts) / plan.ep;
  return local_experts * mlp_params_per_tp_rank(model, as_d(model.moe_ffn_hidden_size), plan.tp);
}

double moe_layer_params_per_rank(const ModelSpec& model, const Plan& plan) {
  const double dense_mlp = mlp_params_per_tp_rank(model, as_d(model.ffn_hidden_size), plan.tp);
  const double router = as_d(model.hidden_size) * as_d(model.num_experts);
  const double shared =
      as_d(model.num_shared_experts) * mlp_params_per_tp_rank(model, as_d(model.moe_ffn_hidden_size), plan.tp);
  return layer_params_per_tp_rank(model, plan.tp) - dense_mlp + router + shared +
         moe_expert_params_per_rank(model, plan);
}

double layer_params_on_rank(const ModelSpec& model, const Plan& plan, std::int64_t layer) {
  return model.is_moe_layer(layer) ? moe_layer_params_per_rank(model, plan) : layer_params_per_tp_rank(model, plan.tp);
}

double chunk_expert_params(const ModelSpec& model, const Plan& plan, const ChunkLayout& chunk) {
  double params = 0.0;
  for (int layer = chunk.first_layer; layer < chunk.first_layer + chunk.num_layers; ++layer) {
    params += model.is_moe_layer(layer) ? moe_expert_params_per_rank(model, plan) : 0.0;
  }
  return params;
}

double expert_params_per_rank(const ModelSpec& model, const Plan& plan, int stage) {
  double params = 0.0;
  if (model.is_moe()) {
    for (const ChunkLayout& chunk : chunk_layouts(plan, model.num_layers, stage)) {
      params += chunk_expert_params(model, plan, chunk);
    }
  }
  return params;
}

double params_per_rank(const ModelSpec& model, const Plan& plan, int stage) {
  double params = 0.0;
  bool has_embedding = false;
  bool has_head = false;
  for (const ChunkLayout& chunk : chunk_layouts(plan, model.num_layers, stage)) {
    if (model.is_moe()) { // --- mixture of experts --- layers differ
      for (int layer = chunk.first_layer; layer < chunk.first_layer + chunk.num_layers; ++layer) {
        params += layer_params_on_rank(model, plan, layer);
      }
    } else {
      params += chunk.num_layers * layer_params_per_tp_rank(model, plan.tp);
    }
    has_embedding = has_embedding || chunk.has_embedding;
    has_head = has_head || chunk.has_head;
  }
  if (has_embedding) {
    params += embedding_params_per_rank(model, plan);
  }
  if (has_head) {
    params += head_params_per_rank(model, plan, has_embedding);
  }
  return params;
}

std::vector<double> chunk_grad_units(const ModelSpec& model, const Plan& plan, const ChunkLayout& chunk,
                                     bool stage_has_embedding) {
  std::vector<double> params;
  if (chunk.has_head) {
    params.push_back(head_params_per_rank(model, plan, stage_has_embedding));
  }
  if (model.is_moe()) { // --- mixture of experts --- backward order: last layer first, routed experts excluded
    for (int layer = chunk.first_layer + chunk.num_layers - 1; layer >= chunk.first_layer; --layer) {
      params.push_back(model.is_moe_layer(layer)
                           ? moe_layer_params_per_rank(model, plan) - moe_expert_params_per_rank(model, plan)
                           : layer_params_per_tp_rank(model, plan.tp));
    }
  } else {
    params.insert(params.end(), static_cast<std::size_t>(chunk.num_layers), layer_params_per_tp_rank(model, plan.tp));
  }
  if (chunk.has_embedding) {
    params.push_back(embedding_params_per_rank(model, plan));
  }
  return params;
}

std::vector<std::size_t> grad_bucket_ends(const Plan& plan, const std::vector<double>& unit_params) {
  const double bucket_params = std::max(plan.grad_bucket_bytes / GRAD_BYTES, 1.0);
  std::vector<std::size_t> ends;
  double open = 0.0;
  for (std::size_t unit = 0; unit < unit_params.size(); ++unit) {
    open += unit_params[unit];
    if (open >= bucket_params || unit + 1 == unit_params.size()) {
      ends.push_back(unit);
      open = 0.0;
    }
  }
  return ends;
}

// Megatron mixed precision (ZeRO paper section 3.1 counts 2 + 2 + 12; Megatron keeps fp32 main grads): 2 + 4 + 12
// = 18 B/param. Distributed optimizer (Megatron-Core docs, "Distributed Optimizer"): the 12 B of master params and
// Adam states are sharded over DP: 6 + 12/dp.
//
// --- ZeRO / FSDP --- Rajbhandari et al. 2020 (ZeRO), Fig. 1 and section 5.1, per device with Psi parameters, K = 12
// optimizer bytes and N_d = dp: baseline (2 + 2 + K) Psi; P_os 2Psi + 2Psi + K Psi/N_d; P_os+g 2Psi + (2 + K)
// Psi/N_d; P_os+g+p (2 + 2 + K) Psi/N_d. With Megatron's fp32 main grads the gradient term is 4 instead of 2:
// stage 1: 2 + 4 + 12/dp, stage 2: 2 + (4 + 12)/dp, stage 3: (2 + 4 + 12)/dp bytes per parameter.
//
// DeepSpeed's BF16 optimizer (Plan::all_reduce_sharded_grads: Megatron-DeepSpeed, BLOOM) keeps the bf16 .grad of
// every parameter as well as the fp32 gradient buffer: the pipeline engine's backward accumulates into the bf16 grads
// and copies them into the fp32 ones (runtime/bf16_optimizer.py update_hp_grads(clear_lp_grads=False), called from
// runtime/pipe/engine.py _exec_backward_pass); they are only dropped by clear_lp_grads() before the next backward, so
// they are live at every backward's peak: + 2 B/param.
//
// --grad-reduce-in-bf16 (Plan::grad_reduce_in_bf16) makes the main-grad buffer bf16: 2 instead of 4 B/param.
namespace {
double main_grad_bytes(const Plan& plan) { return plan.grad_reduce_in_bf16 ? BF16_BYTES : GRAD_BYTES; }

double lp_grad_bytes_per_param(const Plan& plan) {
  return plan.all_reduce_sharded_grads && plan.distributed_optimizer ? BF16_BYTES : 0.0;
}
} // namespace

double static_bytes_per_param(const Plan& plan) {
  const int zero = plan.get_zero_stage();
  const double dp = plan.dp_cp_size(); // the optimizer shards over dp*cp; ZeRO-2/3 plans have cp = 1
  return WEIGHT_BYTES / (zero >= 3 ? dp : 1.0) + main_grad_bytes(plan) / (zero >= 2 ? dp : 1.0) +
         OPTIMIZER_BYTES / (zero >= 1 ? dp : 1.0) + lp_grad_bytes_per_param(plan);
}

MemBytes static_memory(const ModelSpec& model, const Plan& plan, int stage, const MemoryOptions& options) {
  const double params = params_per_rank(model, plan, stage);
  MemBytes bytes{};
  // ZeRO (static_bytes_per_param above): stage >= 1 shards the optimizer state, >= 2 the gradients, 3 the
  // parameters, each over dp. The transient buffers of stages 2/3 are task memory effects (step_builder.cpp): the
  // unsharded gradients of a unit from its backward until its reduce-scatter, and with stage 3 the gathered bf16
  // parameters of the current and the prefetched unit.
  const int zero = plan.get_zero_stage();
  const double dp = plan.dp_cp_size(); // optimizer sharding over dp*cp; ZeRO-2/3 plans have cp = 1
  bytes[static_cast<std::size_t>(MemTag::Weights)] = WEIGHT_BYTES * params / (zero >= 3 ? dp : 1.0);
  // DP gradient buckets are views into the contiguous fp32 main-grad buffer (Megatron DistributedDataParallel,
  // param_and_grad_buffer.py), reduced in place: they add nothing beyond Grads.
  bytes[static_cast<std::size_t>(MemTag::Grads)] =
      main_grad_bytes(plan) * params / (zero >= 2 ? dp : 1.0) + lp_grad_bytes_per_param(plan) * params;
  bytes[static_cast<std::size_t>(MemTag::Optimizer)] = OPTIMIZER_BYTES * params / (zero >= 1 ? dp : 1.0);
  if (model.is_moe() && zero >= 1) {
    // --- mixture of experts --- expert optimizer states are sharded over the dp/ep expert-DP ranks only (MoE plans
    // have cp = 1 and zero <= 1, so dp_cp_size() = dp here)
    const double experts = expert_params_per_rank(model, plan, stage);
    bytes[static_cast<std::size_t>(MemTag::Optimizer)] =
        OPTIMIZER_BYTES / plan.dp * (params - experts) + OPTIMIZER_BYTES / plan.expert_dp() * experts;
  }
  bytes[static_cast<std::size_t>(MemTag::Workspace)] = options.cublas_workspace_bytes;
  // Context parallelism adds the CP ring's communicator (the gradient group is then dp*cp); expert parallelism the
  // EP and expert-DP ones.
  const int communicators = (plan.tp > 1 ? 1 : 0) + (plan.dp_cp_size() > 1 ? 1 : 0) + (plan.pp > 1 ? 1 : 0) +
                            (plan.cp > 1 ? 1 : 0) + (plan.ep > 1 ? 1 : 0) +
                            (plan.ep > 1 && plan.expert_dp() > 1 ? 1 : 0);
  bytes[static_cast<std::size_t>(MemTag::CommBuffers)] = communicators * options.nccl_bytes_per_communicator;
  return bytes;
}

// Korthikanti et al. 2022 Table 2 rows: none / TP / TP+SP as in layer_parts(); selective recompute drops the
// attention core (sbh(10 + 24/t), with SP sbh(34/t)); full recompute keeps only the layer input 2sbh (/t with SP).
// Flash attention drops the attention core as well (it saves only O and the fp32 log-sum-exp, b*a*s*4 bytes, which
// we neglect: < 1% of the rest).
double layer_activation_bytes(const ModelSpec& model, const Plan& plan, const MemoryOptions& options) {
  const LayerActivations parts = layer_parts(model, plan);
  if (plan.recompute == Recompute::Full) {
    const bool sp = plan.sequence_parallel && plan.tp > 1;
    return BF16_BYTES * rank_tokens(model, plan) * as_d(model.hidden_size) / (sp ? plan.tp : 1.0);
  }
  const bool keep_core = plan.recompute == Recompute::None && !options.flash_attention;
  return parts.replicated + parts.sharded + (keep_core ? parts.attention_core : 0.0);
}

double layer_backward_workspace_bytes(const ModelSpec& model, const Plan& plan, const MemoryOptions& options) {
  const LayerActivations parts = layer_parts(model, plan);
  double recomputed = 0.0;
  if (plan.recompute == Recompute::Full) {
    recomputed = parts.replicated + parts.sharded + (options.flash_attention ? 0.0 : parts.attention_core);
  } else if (plan.recompute == Recompute::Selective && !options.flash_attention) {
    recomputed = parts.attention_core;
  }
  // Largest activation gradient alive at once: d(FC1 output) or d(QKV output), bf16, sharded.
  const double tokens = rank_tokens(model, plan);
  const double f = as_d(model.ffn_hidden_size);
  const double widest = std::max(model.gated_mlp ? 2.0 * f : f, as_d(model.q_width()) + 2.0 * as_d(model.kv_width()));
  return recomputed + BF16_BYTES * tokens * widest / plan.tp + cp_comm_buffer_bytes(model, plan, true);
}

// --- context parallelism ---
// Transformer Engine (transformer_engine/pytorch/attention/dot_product_attention/context_parallel.py):
// p2p (AttnFuncWithCPAndKVP2P) double-buffers the K/V block in flight: 2 receive buffers of K and V for the rank's
// b*s/cp tokens (kv/t wide each, bf16); backward circulates dK/dV as well (2 more).
// allgather (AttnFuncWithCPAndKVAllGather): k_ag / v_ag hold the whole sequence's K and V (cp blocks); backward
// gathers them again and accumulates dK / dV of the whole sequence in K's dtype before the reduce-scatter (cp more).
// a2a (AttnFuncWithCPAndQKVOA2A): the all-to-all writes a new Q/K/V (dQ/dK/dV) of the rank's size; the one it reads
// is freed after it.
double cp_comm_buffer_bytes(const ModelSpec& model, const Plan& plan, bool backward) {
  if (plan.cp <= 1) {
    return 0.0;
  }
  const double tokens = rank_tokens(model, plan);
  const double kv_block = 2.0 * tokens * as_d(model.kv_width()) / plan.tp * BF16_BYTES;
  switch (plan.cp_comm_type) {
  case CpCommType::P2P: return (backward ? 4.0 : 2.0) * kv_block;
  case CpCommType::AllGather: return (backward ? 2.0 : 1.0) * plan.cp * kv_block;
  case CpCommType::A2A: return tokens * (as_d(model.q_width()) + 2.0 * as_d(model.kv_width())) / plan.tp * BF16_BYTES;
  }
  return 0.0;
}

// Korthikanti et al. 2022 section 4.3: the input-embedding dropout mask, sbh bytes (sbh/t with SP).
double embedding_activation_bytes(const ModelSpec& model, const Plan& plan) {
  const bool sp = plan.sequence_parallel && plan.tp > 1;
  return MASK_BYTES * rank_tokens(model, plan) * as_d(model.hidden_size) / (sp ? plan.tp : 1.0);
}

// Korthikanti et al. 2022 section 4.3: final norm input 2sbh, output-layer input 2sbh (both /t with SP: the
// all-gathered copy is regathered in backward) and the fp32 logits of the cross-entropy 4sbV/t.
double head_activation_bytes(const ModelSpec& model, const Plan& plan) {
  const bool sp = plan.sequence_parallel && plan.tp > 1;
  const double tokens = rank_tokens(model, plan);
  return 2.0 * BF16_BYTES * tokens * as_d(model.hidden_size) / (sp ? plan.tp : 1.0) +
         FP32_BYTES * tokens * as_d(model.vocab_size) / plan.tp;
}

double head_backward_workspace_bytes(const ModelSpec& model, const Plan& plan) {
  return BF16_BYTES * rank_tokens(model, plan) * as_d(model.vocab_size) / plan.tp;
}

// --- mixture of experts --- (see memory_model.hpp). The attention half is the dense layer's minus its MLP terms
// (FC1 output 2T*F (x2 gated) and FC2 input 2T*F, /t); the FC1 input (ln2 output) stays: it is the router's and the
// experts' input before dispatch.
double moe_layer_activation_bytes(const ModelSpec& model, const Plan& plan, const MemoryOptions& options) {
  const double tokens = as_d(model.seq_length) * as_d(plan.micro_batch_size);
  const double h = as_d(model.hidden_size);
  if (plan.recompute == Recompute::Full) {
    return layer_activation_bytes(model, plan, options); // only the layer input is kept
  }
  const double f = as_d(model.ffn_hidden_size);
  const double fe = as_d(model.moe_ffn_hidden_size);
  const double gate = model.gated_mlp ? 2.0 : 1.0;
  const double dense_mlp = tokens * BF16_BYTES * (gate * f + f) / plan.tp;
  const double rows = plan.moe_imbalance * tokens * as_d(model.moe_top_k);
  const double experts = BF16_BYTES * rows * (h + (gate * fe + fe) / plan.tp);
  const double router = FP32_BYTES * tokens * as_d(model.num_experts);
  const double shared = tokens * BF16_BYTES * as_d(model.num_shared_experts) * (gate * fe + fe) / plan.tp;
  return layer_activation_bytes(model, plan, options) - dense_mlp + experts + router + shared;
}

double moe_layer_backward_workspace_bytes(const ModelSpec& model, const Plan& plan, const MemoryOptions& options) {
  const double tokens = as_d(model.seq_length) * as_d(plan.micro_batch_size);
  const double rows = plan.moe_imbalance * tokens * as_d(model.moe_top_k);
  const double fe = as_d(model.moe_ffn_hidden_size);
  const double dense = layer_backward_workspace_bytes(model, plan, options);
  const double a2a_buffers = 2.0 * BF16_BYTES * rows * as_d(model.hidden_size);
  const double expert_grad = BF16_BYTES * rows * (model.gated_mlp ? 2.0 * fe : fe) / plan.tp;
  // Full recompute also rematerialises the MoE activations (moe_layer_activation_bytes without recompute).
  double recomputed = 0.0;
  if (plan.recompute == Recompute::Full) {
    Plan stored = plan;
    stored.recompute = Recompute::None;
    recomputed = moe_layer_activation_bytes(model, stored, options) - layer_activation_bytes(model, stored, options);
  }
  return dense + recomputed + a2a_buffers + expert_grad;
}

// --- zero-bubble schedules ---
WeightGradPending layer_weight_grad_pending(const ModelSpec& model, const Plan& plan, const MemoryOptions& options) {
  const bool sp = plan.sequence_parallel && plan.tp > 1;
  const double tokens = as_d(model.seq_length) * as_d(plan.micro_batch_size);
  const double h = as_d(model.hidden_size);
  const double q = as_d(model.q_width());
  const double kv = as_d(model.kv_width());
  const double f = as_d(model.ffn_hidden_size);
  const double fc1_out = model.gated_mlp ? 2.0 * f : f;
  const double t = plan.tp;
  const double inputs = BF16_BYTES * tokens * (2.0 * h / (sp ? t : 1.0) + q / t + f / t);
  const double output_grads = BF16_BYTES * tokens * ((q + 2.0 * kv) / t + 2.0 * h + fc1_out / t);
  // The inputs are part of the stored activations (Korthikanti et al. 2022 Table 2) unless full recompute dropped
  // them (then B recomputes them and must keep them for W).
  const double kept = std::min(inputs, layer_activation_bytes(model, plan, options));
  return {kept, output_grads + inputs - kept};
}

WeightGradPending head_weight_grad_pending(const ModelSpec& model, const Plan& plan) {
  const bool sp = plan.sequence_parallel && plan.tp > 1;
  const double tokens = as_d(model.seq_length) * as_d(plan.micro_batch_size);
  return {BF16_BYTES * tokens * as_d(model.hidden_size) / (sp ? plan.tp : 1.0),
          head_backward_workspace_bytes(model, plan)};
}

} // namespace cuboid::model
