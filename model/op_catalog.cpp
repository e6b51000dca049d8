// Op catalog implementation (see op_catalog.hpp). Shapes follow Megatron-LM's ColumnParallelLinear /
// RowParallelLinear sharding (Shoeybi et al. 2019) and sequence parallelism (Korthikanti et al. 2022, section 4.2).
// FLOPs are computed from unsharded sizes divided by tp (in double) so that the per-rank sums reproduce the closed
// forms exactly; the integer shape fields are for the cost model's efficiency curve.
#include "model/op_catalog.hpp"

#include "model/errors.hpp"

#include <cmath>
#include <string_view>
#include <tuple>
#include <utility>

namespace cuboid::model {

namespace {

constexpr double BF16_BYTES = 2.0;
constexpr double FP8_BYTES = 1.0;
constexpr double FP32_BYTES = 4.0;
// wgrad accumulates into the fp32 main grad (Megatron gradient_accumulation_fusion): read + write 4 B each.
constexpr double WGRAD_OUT_BYTES = 2.0 * FP32_BYTES;
// Rough per-element FLOPs of the memory-bound ops: only for cost, never part of model/hardware FLOPs.
constexpr double NORM_FLOPS_PER_ELEMENT = 8.0;
constexpr double ACT_FLOPS_PER_ELEMENT = 8.0;
constexpr double BDA_FLOPS_PER_ELEMENT = 3.0;
constexpr double LOSS_FLOPS_PER_ELEMENT = 5.0;
constexpr double LOSS_FWD_BYTES_PER_LOGIT = 38.0; // head_blocks(): Megatron's unfused vocab-parallel cross-entropy
constexpr double LOSS_BWD_BYTES_PER_LOGIT = 14.0;
// Adam on the fp32 master copy (Megatron mixed precision): read grad, master, m, v (16 B), write master, m, v (12 B)
// and the bf16 model param (2 B); the grad-norm pass reads the grad (4 B) and zeroing the grad writes it (4 B).
constexpr double OPTIMIZER_BYTES_PER_PARAM = 38.0;
constexpr double ADAM_FLOPS_PER_PARAM = 12.0;

// Sizes of one micro-batch on one rank, as doubles (b, s, h, q, kv, F in model letters of op_catalog.hpp).
struct Dims {
  double tokens = 0.0;     // b*s (b*s/cp with context parallelism)
  double seq_tokens = 0.0; // tokens held by a rank outside the TP region: tokens, or tokens/t with sequence parallelism
  double h = 0.0;
  double q = 0.0;          // query width (heads * head_dim)
  double kv = 0.0;         // key (= value) width (query groups * head_dim)
  double ffn = 0.0;
  double fc1_out = 0.0;    // F, or 2F for gated MLPs (gate and up projections)
  double vocab = 0.0;
  double seq = 0.0;
  double tp = 1.0;
  double gemm_in_bytes = BF16_BYTES;
  bool sp = false;
  bool has_tp = false;
  std::int64_t b = 1;
  std::int64_t heads = 1;
  std::int64_t head_dim = 1;
  // --- context parallelism --- tokens / seq_tokens above are this CP rank's b*s/cp; seq stays the full s (keys).
  int cp = 1;
  CpCommType cp_comm_type = CpCommType::P2P;
  // --- CPU prediction across models (branch cpux) --- the CPU backend's kernels of this model (Op::cpu_kernel)
  CpuKernel norm_fwd = CpuKernel::LayerNormFwd;
  CpuKernel norm_bwd = CpuKernel::LayerNormBwd;
  CpuKernel act_fwd = CpuKernel::GeluFwd;
  CpuKernel act_bwd = CpuKernel::GeluBwd;
  double rope_elements = 0.0; // per layer: tokens * (q + kv) / t with RoPE, else 0
};

Dims dims_of(const ModelSpec& model, const Plan& plan) {
  Dims d;
  d.tp = plan.tp;
  d.has_tp = plan.tp > 1;
  d.sp = plan.sequence_parallel && d.has_tp;
  d.b = plan.micro_batch_size;
  d.seq = static_cast<double>(model.seq_length);
  d.cp = plan.cp;
  d.cp_comm_type = plan.cp_comm_type;
  d.tokens = static_cast<double>(plan.micro_batch_size) * d.seq / plan.cp;
  d.seq_tokens = d.sp ? d.tokens / d.tp : d.tokens;
  d.h = static_cast<double>(model.hidden_size);
  d.q = static_cast<double>(model.q_width());
  d.kv = static_cast<double>(model.kv_width());
  d.ffn = static_cast<double>(model.ffn_hidden_size);
  d.fc1_out = model.gated_mlp ? 2.0 * d.ffn : d.ffn;
  d.vocab = static_cast<double>(model.vocab_size);
  d.gemm_in_bytes = plan.precision == Precision::Fp8 ? FP8_BYTES : BF16_BYTES;
  d.heads = model.num_attention_heads;
  d.head_dim = model.head_dim;
  const bool rms = model.norm == NormKind::RmsNorm;
  d.norm_fwd = rms ? CpuKernel::RmsNormFwd : CpuKernel::LayerNormFwd;
  d.norm_bwd = rms ? CpuKernel::RmsNormBwd : CpuKernel::LayerNormBwd;
  d.act_fwd = model.gated_mlp ? CpuKernel::SwigluFwd : CpuKernel::GeluFwd;
  d.act_bwd = model.gated_mlp ? CpuKernel::SwigluBwd : CpuKernel::GeluBwd;
  d.rope_elements = model.learned_position_embedding ? 0.0 : d.tokens * (d.q + d.kv) / d.tp;
  return d;
}

std::int64_t dim(double value) { return static_cast<std::int64_t>(std::llround(value)); }

// C(m, n) = A(m, k) B(k, n): 2mnk FLOPs; A and B read once, C written once.
Op gemm(std::string name, double m, double n, double k, double in_bytes, double out_bytes) {
  Op op;
  op.name = std::move(name);
  op.kind = OpKind::Gemm;
  op.m = dim(m);
  op.n = dim(n);
  op.k = dim(k);
  op.flops = 2.0 * m * n * k;
  op.hbm_bytes = (m * k + k * n) * in_bytes + m * n * out_bytes;
  return op;
}

// A linear layer Y(T, n) = X(T, k) W(k, n) and its two backward GEMMs (each the forward's FLOPs):
// dgrad dX(T, k) = dY(T, n) W^T(n, k); wgrad dW(k, n) = X^T(k, T) dY(T, n).
Op linear_fwd(const std::string& name, const Dims& d, double n, double k) {
  return gemm(name, d.tokens, n, k, d.gemm_in_bytes, BF16_BYTES);
}
Op linear_dgrad(const std::string& name, const Dims& d, double n, double k) {
  return gemm(name + ".dgrad", d.tokens, k, n, d.gemm_in_bytes, BF16_BYTES);
}
Op linear_wgrad(const std::string& name, const Dims& d, double n, double k) {
  return gemm(name + ".wgrad", k, n, d.tokens, d.gemm_in_bytes, WGRAD_OUT_BYTES);
}

// Memory-bound op over `elements` values: `tensors` bf16 tensors of that size read or written once.
Op memory_op(std::string name, OpKind kind, double elements, double tensors, double flops_per_element) {
  Op op;
  op.name = std::move(name);
  op.kind = kind;
  op.m = dim(elements);
  op.flops = elements * flops_per_element;
  op.hbm_bytes = elements * tensors * BF16_BYTES;
  return op;
}

// The op with its CPU backend kernel (see Op::cpu_kernel; changes nothing for GPU profiles).
Op with_kernel(Op op, CpuKernel kernel) {
  op.cpu_kernel = kernel;
  return op;
}

Op tp_collective(std::string name, CollectiveKind kind, double msg_bytes) {
  Op op;
  op.name = std::move(name);
  op.kind = OpKind::TpCollective;
  op.collective = kind;
  op.msg_bytes = msg_bytes;
  return op;
}

// Megatron's f/g conjugate operators (Shoeybi et al. 2019, Fig. 3): after a row-parallel layer the forward
// all-reduces (sequence parallel: reduce-scatter); before a column-parallel layer the backward all-reduces (sequence
// parallel: the forward all-gathers and the backward reduce-scatters). Every message is the full b*s*h bf16
// activation (Korthikanti et al. 2022, section 4.2.2: the same bytes as the all-reduce).
void add_reduce(std::vector<Op>& ops, const Dims& d, const std::string& name) {
  if (d.has_tp) {
    const bool rs = d.sp;
    ops.push_back(tp_collective(name + (rs ? ".reducescatter" : ".allreduce"),
                                rs ? CollectiveKind::ReduceScatter : CollectiveKind::AllReduce,
                                d.tokens * d.h * BF16_BYTES));
  }
}
void add_gather(std::vector<Op>& ops, const Dims& d, const std::string& name) {
  if (d.sp) {
    ops.push_back(tp_collective(name + ".allgather", CollectiveKind::AllGather, d.tokens * d.h * BF16_BYTES));
  }
}

// Flash-style fused attention core, QK^T and AV over the full s x s matrix (Megatron's count: causal masking not
// discounted): forward 4 b s^2 q / t FLOPs; backward twice that. Shape: M = N = s, K = head_dim, batch = b*heads/t.
Op attention(const Dims& d, bool backward) {
  Op op;
  op.name = backward ? "attn.bwd" : "attn";
  op.kind = OpKind::Attention;
  op.m = dim(d.seq);
  op.n = dim(d.seq);
  op.k = d.head_dim;
  op.batch = dim(static_cast<double>(d.b) * static_cast<double>(d.heads) / d.tp);
  const double fwd_flops = 4.0 * d.tokens * d.seq * d.q / d.tp;
  op.flops = backward ? 2.0 * fwd_flops : fwd_flops;
  // forward reads Q, K, V and writes O; backward reads Q, K, V, O, dO and writes dQ, dK, dV.
  const double widths = backward ? 4.0 * d.q + 4.0 * d.kv : 2.0 * d.q + 2.0 * d.kv;
  op.hbm_bytes = d.tokens * widths / d.tp * BF16_BYTES;
  op.rope_elements = d.rope_elements;
  return op;
}

// --- context parallelism --- (Plan::cp_comm_type; Megatron --cp-comm-type)
// p2p: ring attention as Megatron-Core / Transformer Engine run it (TE attention.py AttnFuncWithCPAndKVP2P,
// cp_comm_type "p2p"; Liu et al. 2023 "Ring Attention"): each CP rank holds the load-balanced chunks i and 2cp-1-i
// of the sequence, and the attention is cp steps; in step j the rank attends its queries to the K/V block of CP rank
// (i - j) mod cp while it sends the K/V block it holds to the next rank and receives the next one (cp - 1 exchanges,
// each overlapped with the attention step before it). With the load-balanced split every step does the same causal
// work (1/cp of the rank's attention), so each step is 1/cp of attention(d). Backward runs the ring again and also
// passes the partial dK/dV of each block around (TE sends KV and dKV: twice the bytes).
// Per-rank K/V block: K and V of the rank's b*s/cp tokens, kv/t wide each (GQA: query groups), bf16.
double cp_kv_block_bytes(const Dims& d) { return 2.0 * d.tokens * d.kv / d.tp * BF16_BYTES; }

Op cp_collective(std::string name, CollectiveKind kind, double msg_bytes, bool recompute) {
  Op op;
  op.name = std::move(name);
  op.kind = OpKind::CpCollective;
  op.collective = kind;
  op.msg_bytes = msg_bytes;
  op.recompute = recompute;
  return op;
}

void add_p2p_attention(std::vector<Op>& ops, const Dims& d, const Op& whole, bool backward, bool recompute) {
  const double cp = d.cp;
  Op step = whole;
  step.flops = whole.flops / cp;
  step.hbm_bytes = whole.hbm_bytes / cp;
  step.rope_elements = whole.rope_elements / cp;
  step.m = dim(d.seq / cp); // a (local queries) x (one rank's K/V block) tile: s/cp x s/cp
  step.n = dim(d.seq / cp);
  Op ring;
  ring.name = backward ? "attn.bwd.cp_ring" : "attn.cp_ring";
  ring.kind = OpKind::CpRing;
  ring.recompute = recompute;
  ring.msg_bytes = cp_kv_block_bytes(d) * (backward ? 2.0 : 1.0);
  for (int ring_step = 0; ring_step < d.cp; ++ring_step) {
    if (ring_step + 1 < d.cp) {
      ops.push_back(ring); // overlaps with the attention step that follows it (cost_model.cpp block_cost)
    }
    ops.push_back(step);
  }
}

// allgather: TE AttnFuncWithCPAndKVAllGather (Megatron --cp-comm-type allgather; Llama 3, arXiv 2407.21783 sec.
// 3.3.2): K and V of the rank's tokens are all-gathered over the CP group before the attention ("KV all-gather
// between CP ranks is exposed"), then each of the rank's two chunks attends to the keys up to its own end: two
// kernels of half the rank's work each (s/2cp queries against the s gathered keys, on two streams). Backward gathers
// K/V again and reduce-scatters dK/dV (whole-sequence buffers in K's dtype, bf16).
void add_allgather_attention(std::vector<Op>& ops, const Dims& d, const Op& whole, bool backward, bool recompute) {
  const double gathered = cp_kv_block_bytes(d) * d.cp; // all-gather output: K and V of the whole sequence
  const std::string base = backward ? "attn.bwd" : "attn";
  ops.push_back(cp_collective(base + ".cp_allgather", CollectiveKind::AllGather, gathered, recompute));
  Op chunk = whole;
  chunk.flops = whole.flops / 2.0;
  chunk.hbm_bytes = whole.hbm_bytes / 2.0;
  chunk.rope_elements = whole.rope_elements / 2.0;
  chunk.m = dim(d.seq / (2.0 * d.cp));
  chunk.n = dim(d.seq);
  ops.push_back(chunk);
  ops.push_back(chunk);
  if (backward) {
    ops.push_back(cp_collective(base + ".cp_reducescatter", CollectiveKind::ReduceScatter, gathered, recompute));
  }
}

// a2a: DeepSpeed-Ulysses (Jacobs et al. 2023, arXiv 2309.14509) as TE AttnFuncWithCPAndQKVOA2A runs it: an
// all-to-all turns the rank's (s/cp tokens, all its heads) Q, K and V into (s tokens, heads/cp); the attention runs
// over the whole sequence for heads/(t*cp) heads; an all-to-all returns the output to the sequence split. Backward:
// an all-to-all of O and dO (TE saves O in the sequence split), the attention backward, an all-to-all of dQ, dK, dV.
// Each all-to-all carries the rank's buffer (b*s/cp tokens x its widths / t, bf16), of which (cp-1)/cp leaves it.
void add_a2a_attention(std::vector<Op>& ops, const Dims& d, const Op& whole, bool backward, bool recompute) {
  const double qkv_bytes = d.tokens * (d.q + 2.0 * d.kv) / d.tp * BF16_BYTES;
  const double o_bytes = d.tokens * d.q / d.tp * BF16_BYTES;
  const std::string base = backward ? "attn.bwd" : "attn";
  ops.push_back(cp_collective(base + (backward ? ".cp_a2a.out_dout" : ".cp_a2a.qkv"), CollectiveKind::AllToAll,
                              backward ? 2.0 * o_bytes : qkv_bytes, recompute));
  Op heads = whole;
  heads.batch = dim(static_cast<double>(d.b) * static_cast<double>(d.heads) / (d.tp * d.cp));
  ops.push_back(heads);
  ops.push_back(cp_collective(base + (backward ? ".cp_a2a.dqkv" : ".cp_a2a.out"), CollectiveKind::AllToAll,
                              backward ? qkv_bytes : o_bytes, recompute));
}

void add_attention(std::vector<Op>& ops, const Dims& d, bool backward, bool recompute) {
  Op whole = attention(d, backward);
  whole.recompute = recompute;
  if (d.cp <= 1) {
    ops.push_back(std::move(whole));
    return;
  }
  switch (d.cp_comm_type) {
  case CpCommType::P2P: add_p2p_attention(ops, d, whole, backward, recompute); return;
  case CpCommType::AllGather: add_allgather_attention(ops, d, whole, backward, recompute); return;
  case CpCommType::A2A: add_a2a_attention(ops, d, whole, backward, recompute); return;
  }
}

void finish(OpBlock& block) {
  block.model_flops = 0.0;
  block.hw_flops = 0.0;
  for (const Op& op : block.ops) {
    if (op.kind != OpKind::Gemm && op.kind != OpKind::Attention) {
      continue; // norm / elementwise / loss FLOPs are for cost only (keeps the closed forms exact)
    }
    block.hw_flops += op.flops;
    if (!op.recompute) {
      block.model_flops += op.flops;
    }
  }
}

OpBlock layer_forward(const Dims& d) {
  OpBlock block;
  block.name = "layer.fwd";
  auto& ops = block.ops;
  const double qkv_n = (d.q + 2.0 * d.kv) / d.tp;
  ops.push_back(
      with_kernel(memory_op("ln1", OpKind::Norm, d.seq_tokens * d.h, 2.0, NORM_FLOPS_PER_ELEMENT), d.norm_fwd));
  add_gather(ops, d, "ln1");
  ops.push_back(linear_fwd("qkv", d, qkv_n, d.h));
  add_attention(ops, d, false, false);
  ops.push_back(linear_fwd("proj", d, d.h, d.q / d.tp));
  add_reduce(ops, d, "proj");
  ops.push_back(memory_op("bda1", OpKind::Elementwise, d.seq_tokens * d.h, 3.0, BDA_FLOPS_PER_ELEMENT));
  ops.push_back(
      with_kernel(memory_op("ln2", OpKind::Norm, d.seq_tokens * d.h, 2.0, NORM_FLOPS_PER_ELEMENT), d.norm_fwd));
  add_gather(ops, d, "ln2");
  ops.push_back(linear_fwd("fc1", d, d.fc1_out / d.tp, d.h));
  // GeLU reads F and writes F; SwiGLU reads gate and up (2F) and writes F.
  ops.push_back(with_kernel(
      memory_op("act", OpKind::Elementwise, d.tokens * d.ffn / d.tp, 1.0 + d.fc1_out / d.ffn, ACT_FLOPS_PER_ELEMENT),
      d.act_fwd));
  ops.push_back(linear_fwd("fc2", d, d.h, d.ffn / d.tp));
  add_reduce(ops, d, "fc2");
  ops.push_back(memory_op("bda2", OpKind::Elementwise, d.seq_tokens * d.h, 3.0, BDA_FLOPS_PER_ELEMENT));
  finish(block);
  return block;
}

OpBlock layer_backward(const Dims& d, const OpBlock& forward, Recompute recompute) {
  OpBlock block;
  block.name = "layer.bwd";
  auto& ops = block.ops;
  // Full recompute (Chen et al. 2016; Megatron --recompute-granularity full): rerun the whole forward first.
  // Selective (Korthikanti et al. 2022, section 5): rerun only the attention core QK^T, softmax, AV.
  if (recompute == Recompute::Full) {
    for (Op op : forward.ops) {
      op.recompute = true;
      ops.push_back(std::move(op));
    }
  } else if (recompute == Recompute::Selective) {
    add_attention(ops, d, false, true);
  }
  const double qkv_n = (d.q + 2.0 * d.kv) / d.tp;
  ops.push_back(memory_op("bda2.bwd", OpKind::Elementwise, d.seq_tokens * d.h, 2.0, BDA_FLOPS_PER_ELEMENT));
  add_gather(ops, d, "fc2");
  ops.push_back(linear_dgrad("fc2", d, d.h, d.ffn / d.tp));
  ops.push_back(linear_wgrad("fc2", d, d.h, d.ffn / d.tp));
  // reads the saved fc1 output and dY (F), writes d(fc1 output)
  ops.push_back(with_kernel(memory_op("act.bwd", OpKind::Elementwise, d.tokens * d.ffn / d.tp,
                                      (2.0 * d.fc1_out + d.ffn) / d.ffn, ACT_FLOPS_PER_ELEMENT),
                            d.act_bwd));
  ops.push_back(linear_dgrad("fc1", d, d.fc1_out / d.tp, d.h));
  ops.push_back(linear_wgrad("fc1", d, d.fc1_out / d.tp, d.h));
  add_reduce(ops, d, "fc1");
  ops.push_back(
      with_kernel(memory_op("ln2.bwd", OpKind::Norm, d.seq_tokens * d.h, 3.0, NORM_FLOPS_PER_ELEMENT), d.norm_bwd));
  ops.push_back(memory_op("bda1.bwd", OpKind::Elementwise, d.seq_tokens * d.h, 2.0, BDA_FLOPS_PER_ELEMENT));
  add_gather(ops, d, "proj");
  ops.push_back(linear_dgrad("proj", d, d.h, d.q / d.tp));
  ops.push_back(linear_wgrad("proj", d, d.h, d.q / d.tp));
  add_attention(ops, d, true, false);
  ops.push_back(linear_dgrad("qkv", d, qkv_n, d.h));
  ops.push_back(linear_wgrad("qkv", d, qkv_n, d.h));
  add_reduce(ops, d, "qkv");
  ops.push_back(
      with_kernel(memory_op("ln1.bwd", OpKind::Norm, d.seq_tokens * d.h, 3.0, NORM_FLOPS_PER_ELEMENT), d.norm_bwd));
  finish(block);
  return block;
}

// Vocab-parallel embedding (Megatron VocabParallelEmbedding): each rank looks up the tokens of its vocabulary shard
// and the partial outputs are all-reduced (reduce-scattered with sequence parallelism).
std::pair<OpBlock, OpBlock> embedding_blocks(const ModelSpec& model, const Dims& d) {
  OpBlock fwd;
  fwd.name = "embed.fwd";
  fwd.ops.push_back(memory_op("embed", OpKind::Embedding, d.tokens * d.h, 2.0, 0.0)); // gather rows, write output
  if (model.learned_position_embedding) {
    fwd.ops.push_back(memory_op("pos_embed", OpKind::Elementwise, d.tokens * d.h, 3.0, 1.0));
  }
  add_reduce(fwd.ops, d, "embed");
  finish(fwd);
  OpBlock bwd;
  bwd.name = "embed.bwd";
  add_gather(bwd.ops, d, "embedding");
  // Scatter-add of dY (bf16) into the fp32 main grad rows of this rank's shard (read + write 4 B each).
  Op scatter = memory_op("embedding", OpKind::Embedding, d.tokens * d.h, 1.0, 1.0);
  scatter.hbm_bytes += d.tokens * d.h / d.tp * WGRAD_OUT_BYTES;
  bwd.ops.push_back(std::move(scatter));
  finish(bwd);
  return {std::move(fwd), std::move(bwd)};
}

// Final norm, output layer (column-parallel over the vocabulary) and vocab-parallel cross-entropy, which keeps the
// fp32 softmax for the backward and all-reduces max, sum-exp and the target logit (3 b*s fp32 values) over TP.
std::pair<OpBlock, OpBlock> head_blocks(const Dims& d) {
  const double vocab_shard = d.vocab / d.tp;
  const double logits = d.tokens * vocab_shard;
  OpBlock fwd;
  fwd.name = "head.fwd";
  fwd.ops.push_back(
      with_kernel(memory_op("ln_f", OpKind::Norm, d.seq_tokens * d.h, 2.0, NORM_FLOPS_PER_ELEMENT), d.norm_fwd));
  add_gather(fwd.ops, d, "logits");
  fwd.ops.push_back(linear_fwd("logits", d, vocab_shard, d.h));
  Op loss = memory_op("loss", OpKind::Loss, logits, 0.0, LOSS_FLOPS_PER_ELEMENT);
  // Megatron-LM vocab_parallel_cross_entropy (megatron/core/tensor_parallel/cross_entropy.py, unfused: each step a
  // separate pass over the (b*s, V/t) logits): logits.float() reads 2 B and writes 4 B, max reads 4, the in-place
  // subtract of the max reads and writes 4 + 4, exp 4 + 4, sum-exp reads 4, the in-place division to the softmax
  // kept for backward 4 + 4 = 38 B per logit.
  loss.hbm_bytes = logits * LOSS_FWD_BYTES_PER_LOGIT;
  fwd.ops.push_back(std::move(loss));
  if (d.has_tp) {
    fwd.ops.push_back(tp_collective("loss.allreduce", CollectiveKind::AllReduce, 3.0 * d.tokens * FP32_BYTES));
  }
  finish(fwd);
  OpBlock bwd;
  bwd.name = "head.bwd";
  Op loss_bwd = memory_op("loss", OpKind::Loss, logits, 0.0, 1.0);
  // Backward: the saved softmax minus the one-hot target, scaled in place by the incoming gradient (4 + 4 B), then the
  // backward of .float() casts the fp32 gradient to bf16 (4 + 2 B) = 14 B per logit.
  loss_bwd.hbm_bytes = logits * LOSS_BWD_BYTES_PER_LOGIT;
  bwd.ops.push_back(std::move(loss_bwd));
  bwd.ops.push_back(linear_dgrad("logits", d, vocab_shard, d.h));
  bwd.ops.push_back(linear_wgrad("logits", d, vocab_shard, d.h));
  // conjugate of the forward's identity (all-reduce) or all-gather (reduce-scatter)
  add_reduce(bwd.ops, d, "logits");
  bwd.ops.push_back(
      with_kernel(memory_op("ln_f.bwd", OpKind::Norm, d.seq_tokens * d.h, 3.0, NORM_FLOPS_PER_ELEMENT), d.norm_bwd));
  finish(bwd);
  return {std::move(fwd), std::move(bwd)};
}

// --- mixture of experts ---
// Sizes of a MoE layer on one rank (Megatron-core MoELayer with the alltoall token dispatcher, expert tensor
// parallel = tp): every rank routes its b*s tokens to top_k experts; the EP group's ep*T*K assignments spread over
// E experts, E/ep of them local, so a rank's experts get T*K rows on average and F*T*K on the busiest rank
// (F = moe_imbalance). Those rows are the all-to-all buffer and the expert GEMMs' M.
struct MoeDims {
  double rows = 0.0;            // F * T * K rows processed by this rank's local experts (busiest rank)
  double rows_per_expert = 0.0; // rows / (E/ep)
  double local_experts = 1.0;   // E / ep
  double experts = 0.0;         // E
  double fc1_out = 0.0;         // F_e, or 2 F_e gated
  double ffn = 0.0;             // F_e
  double shared = 0.0;          // shared experts
  double imbalance = 1.0;
};

MoeDims moe_dims_of(const ModelSpec& model, const Plan& plan, const Dims& d) {
  MoeDims m;
  m.experts = static_cast<double>(model.num_experts);
  m.local_experts = m.experts / plan.ep;
  m.imbalance = plan.moe_imbalance;
  m.rows = plan.moe_imbalance * d.tokens * static_cast<double>(model.moe_top_k);
  m.rows_per_expert = m.rows / m.local_experts;
  m.ffn = static_cast<double>(model.moe_ffn_hidden_size);
  m.fc1_out = model.gated_mlp ? 2.0 * m.ffn : m.ffn;
  m.shared = static_cast<double>(model.num_shared_experts);
  return m;
}

// `batch` GEMMs C(m, n) = A(m, k) B(k, n) of the local experts (a grouped GEMM).
Op expert_gemm(std::string name, const MoeDims& m, double rows, double n, double k, double in_bytes,
               double out_bytes) {
  Op op = gemm(std::move(name), rows, n, k, in_bytes, out_bytes);
  op.batch = dim(m.local_experts);
  op.flops *= m.local_experts;
  op.hbm_bytes *= m.local_experts;
  return op;
}

Op ep_alltoall(std::string name, const MoeDims& m, const Dims& d) {
  Op op;
  op.name = std::move(name);
  op.kind = OpKind::EpCollective;
  op.collective = CollectiveKind::AllToAll;
  op.msg_bytes = m.rows * d.h * BF16_BYTES;
  return op;
}

// The MLP of a MoE layer, forward: router (C -> E logits on the rank's sequence tokens, replicated over TP like
// Megatron's TopKRouter), softmax + top-k, dispatch all-to-all, grouped expert GEMMs, TP reduction of the expert
// output, combine all-to-all; shared experts (DeepSeek) are a dense MLP of width shared * F_e on every token.
void moe_mlp_forward(std::vector<Op>& ops, const Dims& d, const MoeDims& m) {
  ops.push_back(gemm("router", d.seq_tokens, m.experts, d.h, d.gemm_in_bytes, FP32_BYTES));
  ops.push_back(memory_op("router.topk", OpKind::Elementwise, d.seq_tokens * m.experts, 2.0, ACT_FLOPS_PER_ELEMENT));
  ops.push_back(ep_alltoall("dispatch.alltoall", m, d));
  ops.push_back(expert_gemm("expert.fc1", m, m.rows_per_expert, m.fc1_out / d.tp, d.h, d.gemm_in_bytes, BF16_BYTES));
  ops.push_back(with_kernel(memory_op("expert.act", OpKind::Elementwise, m.rows * m.ffn / d.tp, 1.0 + m.fc1_out / m.ffn,
                                      ACT_FLOPS_PER_ELEMENT),
                            d.act_fwd));
  ops.push_back(expert_gemm("expert.fc2", m, m.rows_per_expert, d.h, m.ffn / d.tp, d.gemm_in_bytes, BF16_BYTES));
  if (d.has_tp) {
    ops.push_back(tp_collective("expert.fc2.allreduce", CollectiveKind::AllReduce, m.rows * d.h * BF16_BYTES));
  }
  ops.push_back(ep_alltoall("combine.alltoall", m, d));
  if (m.shared > 0.0) {
    ops.push_back(linear_fwd("shared.fc1", d, m.shared * m.fc1_out / d.tp, d.h));
    ops.push_back(with_kernel(memory_op("shared.act", OpKind::Elementwise, d.tokens * m.shared * m.ffn / d.tp,
                                        1.0 + m.fc1_out / m.ffn, ACT_FLOPS_PER_ELEMENT),
                              d.act_fwd));
    ops.push_back(linear_fwd("shared.fc2", d, d.h, m.shared * m.ffn / d.tp));
    add_reduce(ops, d, "shared.fc2");
  }
}

// Backward of moe_mlp_forward in reverse: shared experts, combine all-to-all (output gradients to the experts),
// expert dgrad/wgrad, TP all-reduce of the expert input gradient, dispatch all-to-all (input gradients back to the
// tokens' ranks), router backward (softmax/top-k, dgrad, wgrad).
void moe_mlp_backward(std::vector<Op>& ops, const Dims& d, const MoeDims& m) {
  if (m.shared > 0.0) {
    add_gather(ops, d, "shared.fc2");
    ops.push_back(linear_dgrad("shared.fc2", d, d.h, m.shared * m.ffn / d.tp));
    ops.push_back(linear_wgrad("shared.fc2", d, d.h, m.shared * m.ffn / d.tp));
    ops.push_back(with_kernel(memory_op("shared.act.bwd", OpKind::Elementwise, d.tokens * m.shared * m.ffn / d.tp,
                                        (2.0 * m.fc1_out + m.ffn) / m.ffn, ACT_FLOPS_PER_ELEMENT),
                              d.act_bwd));
    ops.push_back(linear_dgrad("shared.fc1", d, m.shared * m.fc1_out / d.tp, d.h));
    ops.push_back(linear_wgrad("shared.fc1", d, m.shared * m.fc1_out / d.tp, d.h));
  }
  ops.push_back(ep_alltoall("combine.alltoall", m, d));
  ops.push_back(expert_gemm("expert.fc2.dgrad", m, m.rows_per_expert, m.ffn / d.tp, d.h, d.gemm_in_bytes,
                            BF16_BYTES));
  ops.push_back(expert_gemm("expert.fc2.wgrad", m, m.ffn / d.tp, d.h, m.rows_per_expert, d.gemm_in_bytes,
                            WGRAD_OUT_BYTES));
  ops.push_back(with_kernel(memory_op("expert.act.bwd", OpKind::Elementwise, m.rows * m.ffn / d.tp,
                                      (2.0 * m.fc1_out + m.ffn) / m.ffn, ACT_FLOPS_PER_ELEMENT),
                            d.act_bwd));
  ops.push_back(
      expert_gemm("expert.fc1.dgrad", m, m.rows_per_expert, d.h, m.fc1_out / d.tp, d.gemm_in_bytes, BF16_BYTES));
  ops.push_back(expert_gemm("expert.fc1.wgrad", m, d.h, m.fc1_out / d.tp, m.rows_per_expert, d.gemm_in_bytes,
                            WGRAD_OUT_BYTES));
  if (d.has_tp) {
    ops.push_back(tp_collective("expert.fc1.allreduce", CollectiveKind::AllReduce, m.rows * d.h * BF16_BYTES));
  }
  ops.push_back(ep_alltoall("dispatch.alltoall", m, d));
  ops.push_back(memory_op("router.topk.bwd", OpKind::Elementwise, d.seq_tokens * m.experts, 3.0,
                          ACT_FLOPS_PER_ELEMENT));
  ops.push_back(gemm("router.dgrad", d.seq_tokens, d.h, m.experts, d.gemm_in_bytes, BF16_BYTES));
  ops.push_back(gemm("router.wgrad", d.h, m.experts, d.seq_tokens, d.gemm_in_bytes, WGRAD_OUT_BYTES));
  add_reduce(ops, d, "shared.fc1"); // conjugate of the shared experts' / router's input (no-op without TP)
}

std::size_t index_of(const OpBlock& block, const std::string& name) {
  for (std::size_t idx = 0; idx < block.ops.size(); ++idx) {
    if (block.ops[idx].name == name) {
      return idx;
    }
  }
  CUBOID_ASSERT(false, "op {} not in block {}", name, block.name);
  return 0;
}

// Without sequence parallelism every TP rank runs the router on all b*s tokens: tp - 1 of those copies are
// redundant work, counted in hardware FLOPs only (so that model FLOPs summed over ranks stay the closed form).
void discount_replicated_router(OpBlock& block, const Dims& d) {
  if (d.has_tp && !d.sp) {
    double router_flops = 0.0;
    for (const Op& op : block.ops) {
      if (!op.recompute && (op.name == "router" || op.name == "router.dgrad" || op.name == "router.wgrad")) {
        router_flops += op.flops;
      }
    }
    block.model_flops -= router_flops * (1.0 - 1.0 / d.tp);
  }
}

// MoE layer = the dense layer's attention half (ops before fc1, resp. from ln2.bwd on) + the MoE MLP + bda2.
std::pair<OpBlock, OpBlock> moe_layer_blocks(const ModelSpec& model, const Plan& plan, const Dims& d) {
  const MoeDims m = moe_dims_of(model, plan, d);
  const OpBlock dense_fwd = layer_forward(d);
  OpBlock fwd;
  fwd.name = "moe.fwd";
  const std::size_t fc1 = index_of(dense_fwd, "fc1");
  fwd.ops.assign(dense_fwd.ops.begin(), dense_fwd.ops.begin() + static_cast<std::ptrdiff_t>(fc1));
  moe_mlp_forward(fwd.ops, d, m);
  fwd.ops.push_back(dense_fwd.ops.back()); // bda2
  finish(fwd);
  discount_replicated_router(fwd, d);

  const OpBlock dense_bwd = layer_backward(d, dense_fwd, Recompute::None);
  OpBlock bwd;
  bwd.name = "moe.bwd";
  if (plan.recompute == Recompute::Full) {
    for (Op op : fwd.ops) {
      op.recompute = true;
      bwd.ops.push_back(std::move(op));
    }
  } else if (plan.recompute == Recompute::Selective) {
    Op op = attention(d, false);
    op.recompute = true;
    bwd.ops.push_back(std::move(op));
  }
  bwd.ops.push_back(dense_bwd.ops.front()); // bda2.bwd
  moe_mlp_backward(bwd.ops, d, m);
  const std::size_t ln2_bwd = index_of(dense_bwd, "ln2.bwd");
  bwd.ops.insert(bwd.ops.end(), dense_bwd.ops.begin() + static_cast<std::ptrdiff_t>(ln2_bwd), dense_bwd.ops.end());
  finish(bwd);
  discount_replicated_router(bwd, d);
  return {std::move(fwd), std::move(bwd)};
}

// --- zero-bubble schedules ---
// Qi et al. 2024, section 2: B computes the gradient w.r.t. the layer input (dgrad GEMMs and everything on the path
// to the previous layer), W the gradient w.r.t. the weights (wgrad GEMMs), each about one forward in FLOPs.
std::pair<OpBlock, OpBlock> split_backward(const OpBlock& backward, const std::string& unit) {
  OpBlock input;
  input.name = unit + ".igrad.bwd";
  OpBlock weight;
  weight.name = unit + ".wgrad.bwd";
  constexpr std::string_view WGRAD = ".wgrad";
  for (const Op& op : backward.ops) {
    const bool is_wgrad = op.name.size() > WGRAD.size() &&
                          op.name.compare(op.name.size() - WGRAD.size(), WGRAD.size(), WGRAD) == 0;
    (is_wgrad ? weight : input).ops.push_back(op);
  }
  finish(input);
  finish(weight);
  return {std::move(input), std::move(weight)};
}

} // namespace

StepBlocks make_step_blocks(const ModelSpec& model, const Plan& plan) {
  CUBOID_ASSERT(plan.tp > 0 && plan.micro_batch_size > 0, "bad plan tp={} b={}", plan.tp, plan.micro_batch_size);
  const Dims d = dims_of(model, plan);
  StepBlocks blocks;
  blocks.layer_fwd = layer_forward(d);
  blocks.layer_bwd = layer_backward(d, blocks.layer_fwd, plan.recompute);
  std::tie(blocks.embed_fwd, blocks.embed_bwd) = embedding_blocks(model, d);
  std::tie(blocks.head_fwd, blocks.head_bwd) = head_blocks(d);
  if (model.is_moe()) {
    std::tie(blocks.moe_layer_fwd, blocks.moe_layer_bwd) = moe_layer_blocks(model, plan, d);
  }
  std::tie(blocks.layer_bwd_input, blocks.layer_bwd_weight) = split_backward(blocks.layer_bwd, "layer");
  std::tie(blocks.head_bwd_input, blocks.head_bwd_weight) = split_backward(blocks.head_bwd, "head");
  blocks.embed_bwd_weight = blocks.embed_bwd;
  blocks.embed_bwd_weight.name = "embed.wgrad.bwd";
  return blocks;
}

OpBlock make_optimizer_block(double num_params) {
  OpBlock block;
  block.name = "optimizer";
  Op adam;
  adam.name = "adam";
  adam.kind = OpKind::Elementwise;
  adam.m = dim(num_params);
  adam.flops = ADAM_FLOPS_PER_PARAM * num_params;
  adam.hbm_bytes = OPTIMIZER_BYTES_PER_PARAM * num_params;
  block.ops.push_back(std::move(adam));
  return block; // model_flops / hw_flops stay 0: optimizer math is not part of the FLOP counts
}

// Per token per layer, forward (Korthikanti et al. 2022, section 6.1, generalised to GQA and gated MLPs):
//   QKV 2h(q + 2kv), attention scores and values 2sq + 2sq, output projection 2qh, MLP 2hF(x2 gated) + 2Fh.
double layer_forward_flops_per_token(const ModelSpec& model) {
  const auto h = static_cast<double>(model.hidden_size);
  const auto q = static_cast<double>(model.q_width());
  const auto kv = static_cast<double>(model.kv_width());
  const auto s = static_cast<double>(model.seq_length);
  const auto f = static_cast<double>(model.ffn_hidden_size);
  const double fc1_out = model.gated_mlp ? 2.0 * f : f;
  return 2.0 * h * (q + 2.0 * kv) + 4.0 * s * q + 2.0 * q * h + 2.0 * h * fc1_out + 2.0 * f * h;
}

// --- mixture of experts --- Attention half of layer_forward_flops_per_token (the dense MLP removed), the router
// 2hE, and top_k routed + shared experts of F_e each: per expert 2hF_e (x2 gated) + 2F_e h.
double moe_layer_forward_flops_per_token(const ModelSpec& model) {
  const auto h = static_cast<double>(model.hidden_size);
  const auto f = static_cast<double>(model.ffn_hidden_size);
  const auto fe = static_cast<double>(model.moe_ffn_hidden_size);
  const double gate = model.gated_mlp ? 2.0 : 1.0;
  const double dense_mlp = 2.0 * h * gate * f + 2.0 * f * h;
  const double expert = 2.0 * h * gate * fe + 2.0 * fe * h;
  const double visited = static_cast<double>(model.moe_top_k + model.num_shared_experts);
  return layer_forward_flops_per_token(model) - dense_mlp + 2.0 * h * static_cast<double>(model.num_experts) +
         visited * expert;
}

double logits_forward_flops_per_token(const ModelSpec& model) {
  return 2.0 * static_cast<double>(model.hidden_size) * static_cast<double>(model.vocab_size);
}

// Forward + backward = 3x forward (backward = dgrad + wgrad); Korthikanti et al. 2022 eq. for model FLOPs:
// 72 B s L h^2 (1 + s/(6h) + V/(12 L h)) for F = 4h and MHA.
double model_flops_per_step(const ModelSpec& model, const Plan& plan) {
  const double tokens = static_cast<double>(plan.global_batch_size) * static_cast<double>(model.seq_length);
  const auto moe_layers = static_cast<double>(model.num_moe_layers());
  const double dense_layers = static_cast<double>(model.num_layers) - moe_layers;
  const double layers_flops = dense_layers * layer_forward_flops_per_token(model) +
                              (moe_layers > 0.0 ? moe_layers * moe_layer_forward_flops_per_token(model) : 0.0);
  return 3.0 * tokens * (layers_flops + logits_forward_flops_per_token(model));
}

// Narayanan et al. SC21 eq. 3: full recompute runs one more forward of every layer (not of the logits):
// 96 B s L h^2 (1 + s/(6h) + V/(16 L h)). Selective recompute reruns only the attention core (4 s q per token).
double hw_flops_per_step(const ModelSpec& model, const Plan& plan) {
  const double tokens = static_cast<double>(plan.global_batch_size) * static_cast<double>(model.seq_length);
  const auto layers = static_cast<double>(model.num_layers);
  double extra = 0.0;
  if (plan.recompute == Recompute::Full) {
    extra = tokens * layers * layer_forward_flops_per_token(model);
    if (model.is_moe()) { // --- mixture of experts --- one more forward of the dense and the MoE layers
      const auto moe_layers = static_cast<double>(model.num_moe_layers());
      extra = tokens * ((layers - moe_layers) * layer_forward_flops_per_token(model) +
                        moe_layers * moe_layer_forward_flops_per_token(model));
    }
  } else if (plan.recompute == Recompute::Selective) {
    extra = tokens * layers * 4.0 * static_cast<double>(model.seq_length) * static_cast<double>(model.q_width());
  }
  return model_flops_per_step(model, plan) + extra;
}

} // namespace cuboid::model
