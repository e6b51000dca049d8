// GptModel: parameter declaration (names and TP splits of the full model), and forward/backward of each unit with
// the Megatron conjugate operators. Backward follows the forward in reverse; every gradient is accumulated into the
// flat gradient buffer (grads are zeroed once per step by the runtime).
#include "exec/gpt_model.hpp"

#include "exec/cpu/activation.hpp"
#include "exec/cpu/attention.hpp"
#include "exec/cpu/cross_entropy.hpp"
#include "exec/cpu/embedding.hpp"
#include "exec/cpu/linear.hpp"
#include "exec/cpu/norm.hpp"
#include "exec/cpu/rope.hpp"
#include "exec/cpu/tp_ops.hpp"
#include "model/errors.hpp"

#include <fmt/format.h>

#include <cmath>

namespace cuboid::exec {

using cpu::Mat;

namespace {
constexpr double INIT_STD = 0.02;            // GPT-2 / Megatron init_method_std
constexpr double POSITION_INIT_STD = 0.01;   // GPT-2 wpe
} // namespace

GptModel::GptModel(const model::ModelSpec& spec, const model::Plan& plan, int tp_rank, int pp_rank,
                   std::uint64_t seed, bool materialize, int ep_rank)
    : spec_(spec), plan_(plan), tp_rank_(tp_rank), pp_rank_(pp_rank),
      chunks_(model::chunk_layouts(plan, spec.num_layers, pp_rank)), params_(plan.tp, tp_rank), ep_rank_(ep_rank) {
  declare_params();
  params_.finalize(seed, materialize);
}

std::vector<ParamInfo> canonical_params(const model::ModelSpec& spec) {
  model::Plan single;
  single.micro_batch_size = 1;
  single.global_batch_size = 1;
  const GptModel full(spec, single, 0, 0, 0, false);
  return full.params().infos();
}

std::int64_t GptModel::activation_rows() const {
  const std::int64_t rows = spec_.seq_length * plan_.micro_batch_size / plan_.cp;
  return plan_.sequence_parallel ? rows / plan_.tp : rows;
}

GptModel::NormIdx GptModel::add_norm(const std::string& name) {
  NormIdx idx;
  idx.w = params_.add(name + ".w", 1, spec_.hidden_size, TpSplit::Replicated, InitKind::Ones, 0.0);
  if (spec_.norm == model::NormKind::LayerNorm) {
    idx.b = params_.add(name + ".b", 1, spec_.hidden_size, TpSplit::Replicated, InitKind::Zeros, 0.0);
  }
  return idx;
}

// Declared in backward order (head, last layer .. first layer, embedding) so that the flat gradient buffer fills
// from the front during backward and DP buckets can start early.
GptModel::LayerIdx::Expert GptModel::declare_mlp(const std::string& prefix, std::int64_t ffn) {
  const std::int64_t C = spec_.hidden_size;
  const bool bias = spec_.linear_bias;
  const double out_std = INIT_STD / std::sqrt(2.0 * static_cast<double>(spec_.num_layers));
  LayerIdx::Expert m;
  m.w2 = params_.add(prefix + "w2", ffn, C, TpSplit::Rows, InitKind::Normal, out_std);
  if (bias) {
    m.b2 = params_.add(prefix + "b2", 1, C, TpSplit::Replicated, InitKind::Zeros, 0.0);
  }
  m.w1 = params_.add(prefix + "w1", C, ffn, TpSplit::Columns, InitKind::Normal, INIT_STD);
  if (bias) {
    m.b1 = params_.add(prefix + "b1", 1, ffn, TpSplit::Columns, InitKind::Zeros, 0.0);
  }
  if (spec_.gated_mlp) {
    m.wg = params_.add(prefix + "wg", C, ffn, TpSplit::Columns, InitKind::Normal, INIT_STD);
    if (bias) {
      m.bg = params_.add(prefix + "bg", 1, ffn, TpSplit::Columns, InitKind::Zeros, 0.0);
    }
  }
  return m;
}

void GptModel::declare_params() {
  const std::int64_t C = spec_.hidden_size;
  const std::int64_t V = spec_.vocab_size;
  const bool has_embedding =
      std::any_of(chunks_.begin(), chunks_.end(), [](const model::ChunkLayout& c) { return c.has_embedding; });
  const bool has_head =
      std::any_of(chunks_.begin(), chunks_.end(), [](const model::ChunkLayout& c) { return c.has_head; });
  const bool bias = spec_.linear_bias;
  const double out_std = INIT_STD / std::sqrt(2.0 * static_cast<double>(spec_.num_layers));

  if (has_head) {
    final_norm_ = add_norm("final_norm");
    if (spec_.tied_embeddings) {
      wte_ = params_.add("embed.wte", V, C, TpSplit::Rows, InitKind::Normal, INIT_STD);
      head_w_ = wte_;
      params_.info(wte_).embedding_copy = !has_embedding; // the first stage owns it; this is the tied copy
    } else {
      head_w_ = params_.add("head.w", V, C, TpSplit::Rows, InitKind::Normal, INIT_STD);
    }
  }
  int last_layer = -1;
  first_layer_ = static_cast<int>(spec_.num_layers);
  for (const auto& chunk : chunks_) {
    first_layer_ = std::min(first_layer_, chunk.first_layer);
    last_layer = std::max(last_layer, chunk.first_layer + chunk.num_layers - 1);
  }
  layer_slot_.assign(static_cast<std::size_t>(spec_.num_layers), -1);
  std::vector<int> stage_layers;
  for (const auto& chunk : chunks_) {
    for (int layer = chunk.first_layer; layer < chunk.first_layer + chunk.num_layers; ++layer) {
      stage_layers.push_back(layer);
    }
  }
  std::sort(stage_layers.rbegin(), stage_layers.rend());
  layers_.resize(stage_layers.size());
  for (std::size_t slot = 0; slot < stage_layers.size(); ++slot) {
    const int layer = stage_layers[slot];
    layer_slot_[static_cast<std::size_t>(layer)] = static_cast<int>(slot);
    LayerIdx& p = layers_[slot];
    const std::string pre = fmt::format("layers.{}.", layer);
    const std::int64_t F = spec_.ffn_hidden_size;
    if (spec_.is_moe_layer(layer)) { // --- mixture of experts --- router here, routed experts after everything else
      declare_moe_router(p, pre);
    } else {
      const LayerIdx::Expert mlp = declare_mlp(pre + "mlp.", F);
      p.w2 = mlp.w2;
      p.b2 = mlp.b2;
      p.w1 = mlp.w1;
      p.b1 = mlp.b1;
      p.wg = mlp.wg;
      p.bg = mlp.bg;
    }
    p.ln2 = add_norm(pre + "ln2");
    p.wo = params_.add(pre + "attn.wo", spec_.q_width(), C, TpSplit::Rows, InitKind::Normal, out_std);
    if (bias) {
      p.bo = params_.add(pre + "attn.bo", 1, C, TpSplit::Replicated, InitKind::Zeros, 0.0);
    }
    p.wq = params_.add(pre + "attn.wq", C, spec_.q_width(), TpSplit::Columns, InitKind::Normal, INIT_STD);
    p.wk = params_.add(pre + "attn.wk", C, spec_.kv_width(), TpSplit::Columns, InitKind::Normal, INIT_STD);
    p.wv = params_.add(pre + "attn.wv", C, spec_.kv_width(), TpSplit::Columns, InitKind::Normal, INIT_STD);
    if (bias) {
      p.bq = params_.add(pre + "attn.bq", 1, spec_.q_width(), TpSplit::Columns, InitKind::Zeros, 0.0);
      p.bk = params_.add(pre + "attn.bk", 1, spec_.kv_width(), TpSplit::Columns, InitKind::Zeros, 0.0);
      p.bv = params_.add(pre + "attn.bv", 1, spec_.kv_width(), TpSplit::Columns, InitKind::Zeros, 0.0);
    }
    p.ln1 = add_norm(pre + "ln1");
  }
  if (has_embedding) {
    if (spec_.learned_position_embedding) {
      wpe_ = params_.add("embed.wpe", spec_.seq_length, C, TpSplit::Replicated, InitKind::Normal, POSITION_INIT_STD);
    }
    if (wte_ < 0) {
      wte_ = params_.add("embed.wte", V, C, TpSplit::Rows, InitKind::Normal, INIT_STD);
    }
  }
  declare_moe_experts();
  if (plan_.sequence_parallel) {
    for (int idx = 0; idx < static_cast<int>(params_.infos().size()); ++idx) {
      auto& info = params_.info(idx);
      info.sequence_parallel_grad = info.split == TpSplit::Replicated;
    }
  }
}

std::vector<int> GptModel::embedding_params() const {
  std::vector<int> out;
  if (wte_ >= 0 && !params_.info(wte_).embedding_copy) {
    out.push_back(wte_);
  }
  if (wpe_ >= 0) {
    out.push_back(wpe_);
  }
  return out;
}

std::vector<int> GptModel::layer_params(int layer) const {
  const LayerIdx& p = layer_idx(layer);
  std::vector<int> out;
  for (const int idx : {p.ln1.w, p.ln1.b, p.wq, p.bq, p.wk, p.bk, p.wv, p.bv, p.wo, p.bo, p.ln2.w, p.ln2.b, p.w1, p.b1,
                        p.wg, p.bg, p.w2, p.b2, p.router}) {
    if (idx >= 0) {
      out.push_back(idx);
    }
  }
  for (const LayerIdx::Expert& e : p.experts) { // --- mixture of experts ---
    for (const int idx : {e.w1, e.b1, e.wg, e.bg, e.w2, e.b2}) {
      if (idx >= 0) {
        out.push_back(idx);
      }
    }
  }
  return out;
}

std::vector<int> GptModel::head_params() const {
  std::vector<int> out{final_norm_.w};
  if (final_norm_.b >= 0) {
    out.push_back(final_norm_.b);
  }
  if (head_w_ >= 0 && (head_w_ != wte_ || params_.info(wte_).embedding_copy)) {
    out.push_back(head_w_);
  }
  return out;
}

const GptModel::LayerIdx& GptModel::layer_idx(int layer) const {
  CUBOID_ASSERT(layer >= 0 && layer < spec_.num_layers && layer_slot_[static_cast<std::size_t>(layer)] >= 0,
                "layer {} is not held by pipeline stage {}", layer, pp_rank_);
  return layers_[static_cast<std::size_t>(layer_slot_[static_cast<std::size_t>(layer)])];
}

cpu::ConstMatMap GptModel::weight(int idx) const {
  const auto& info = params_.info(idx);
  return cpu::map_mat(params_.value(idx), info.rows, info.cols);
}

cpu::MatMap GptModel::grad(int idx) {
  const auto& info = params_.info(idx);
  return cpu::map_mat(params_.grad(idx), info.rows, info.cols);
}

const float* GptModel::bias(int idx) const { return idx < 0 ? nullptr : params_.value(idx); }

void GptModel::row_parallel_forward(Communicator& tp, const Mat& in, int weight_idx, int bias_idx, Mat& out) const {
  Mat partial(in.rows(), spec_.hidden_size);
  cpu::linear_forward(in, weight(weight_idx), nullptr, partial);
  leave_tp(tp, partial, out);
  if (bias_idx >= 0) {
    out.rowwise() += Eigen::Map<const cpu::RowVec>(params_.value(bias_idx), spec_.hidden_size);
  }
}
float* GptModel::bias_grad(int idx) { return idx < 0 ? nullptr : params_.grad(idx); }

void GptModel::norm_forward(const NormIdx& idx, const Mat& x, Mat& y, cpu::ColVec& mean, cpu::ColVec& rstd) const {
  y.resize(x.rows(), x.cols());
  const Eigen::Map<const cpu::RowVec> w(params_.value(idx.w), spec_.hidden_size);
  if (idx.b >= 0) {
    const Eigen::Map<const cpu::RowVec> b(params_.value(idx.b), spec_.hidden_size);
    cpu::layer_norm_forward(x, w, b, y, mean, rstd);
  } else {
    cpu::rms_norm_forward(x, w, y, rstd);
  }
}

void GptModel::norm_backward(const NormIdx& idx, const Mat& dy, const Mat& x, const cpu::ColVec& mean,
                             const cpu::ColVec& rstd, Mat& dx) {
  const Eigen::Map<const cpu::RowVec> w(params_.value(idx.w), spec_.hidden_size);
  Eigen::Map<cpu::RowVec> dw(params_.grad(idx.w), spec_.hidden_size);
  if (idx.b >= 0) {
    Eigen::Map<cpu::RowVec> db(params_.grad(idx.b), spec_.hidden_size);
    cpu::layer_norm_backward(dy, x, w, mean, rstd, dx, dw, db);
  } else {
    cpu::rms_norm_backward(dy, x, w, rstd, dx, dw);
  }
}

void GptModel::enter_tp(Communicator& tp, const Mat& local, Mat& full) const {
  if (plan_.sequence_parallel) {
    cpu::all_gather_rows(tp, local, full);
  } else {
    full = local;
  }
}

void GptModel::leave_tp(Communicator& tp, Mat& partial, Mat& out) const {
  if (plan_.sequence_parallel) {
    cpu::reduce_scatter_rows(tp, partial, out);
  } else {
    cpu::all_reduce_rows(tp, partial);
    out = std::move(partial);
  }
}

// ---- embedding

void GptModel::embedding_forward(Communicator& tp, std::span<const std::int32_t> tokens, Mat& out) const {
  const auto& info = params_.info(wte_);
  Mat partial(static_cast<Eigen::Index>(tokens.size()), spec_.hidden_size);
  cpu::embedding_forward(tokens, weight(wte_), info.row0, partial);
  leave_tp(tp, partial, out);
  if (wpe_ >= 0 && plan_.cp > 1) {
    // The rank's two chunks sit at rows chunk*cB of the whole sequence (c = chunk index, B = micro-batch).
    const std::int64_t chunk = cp_chunk_rows();
    const auto [first, second] = context_parallel_chunks(plan_.cp, cp_rank_);
    cpu::position_embedding_forward(weight(wpe_), first * chunk, plan_.micro_batch_size, out.topRows(chunk));
    cpu::position_embedding_forward(weight(wpe_), second * chunk, plan_.micro_batch_size, out.bottomRows(chunk));
  } else if (wpe_ >= 0) {
    const std::int64_t first_row = plan_.sequence_parallel ? out.rows() * tp_rank_ : 0;
    cpu::position_embedding_forward(weight(wpe_), first_row, plan_.micro_batch_size, out);
  }
}

void GptModel::embedding_backward(Communicator& tp, std::span<const std::int32_t> tokens, const Mat& dout) {
  if (wpe_ >= 0 && plan_.cp > 1) {
    const std::int64_t chunk = cp_chunk_rows();
    const auto [first, second] = context_parallel_chunks(plan_.cp, cp_rank_);
    cpu::position_embedding_backward(dout.topRows(chunk), first * chunk, plan_.micro_batch_size, grad(wpe_));
    cpu::position_embedding_backward(dout.bottomRows(chunk), second * chunk, plan_.micro_batch_size, grad(wpe_));
  } else if (wpe_ >= 0) {
    const std::int64_t first_row = plan_.sequence_parallel ? dout.rows() * tp_rank_ : 0;
    cpu::position_embedding_backward(dout, first_row, plan_.micro_batch_size, grad(wpe_));
  }
  // Conjugate of leave_tp: the all-reduce's backward is the identity, the reduce-scatter's an all-gather.
  Mat full;
  enter_tp(tp, dout, full);
  cpu::embedding_backward(tokens, full, params_.info(wte_).row0, grad(wte_));
}

// ---- transformer layer

void GptModel::layer_forward(Communicator& tp, int layer, const Mat& x, Mat& out, LayerCache& c, bool keep_all) const {
  const LayerIdx& p = layer_idx(layer);
  const std::int64_t q_cols = params_.info(p.wq).cols;
  const std::int64_t kv_cols = params_.info(p.wk).cols;
  const cpu::AttentionShape shape{spec_.seq_length, plan_.micro_batch_size, q_cols / spec_.head_dim,
                                  kv_cols / spec_.head_dim, spec_.head_dim};
  c.x = x;
  norm_forward(p.ln1, x, c.h1, c.ln1_mean, c.ln1_rstd);
  enter_tp(tp, c.h1, c.h1_full);
  const Eigen::Index rows = c.h1_full.rows();
  c.q.resize(rows, q_cols);
  c.k.resize(rows, kv_cols);
  c.v.resize(rows, kv_cols);
  cpu::linear_forward(c.h1_full, weight(p.wq), bias(p.bq), c.q);
  cpu::linear_forward(c.h1_full, weight(p.wk), bias(p.bk), c.k);
  cpu::linear_forward(c.h1_full, weight(p.wv), bias(p.bv), c.v);
  if (!spec_.learned_position_embedding && plan_.cp > 1) {
    cp_rope(c.q, true);
    cp_rope(c.k, true);
  } else if (!spec_.learned_position_embedding) {
    cpu::rope_forward(c.q, plan_.micro_batch_size, spec_.head_dim);
    cpu::rope_forward(c.k, plan_.micro_batch_size, spec_.head_dim);
  }
  c.attn.resize(rows, q_cols);
  const bool keep_probs = plan_.recompute == model::Recompute::None;
  if (cp_ulysses()) {
    // DeepSpeed-Ulysses: every rank attends the whole sequence for heads/cp of its heads (a plain causal attention).
    cp_rows_to_heads(c.q, c.q_full);
    cp_rows_to_heads(c.k, c.k_full);
    cp_rows_to_heads(c.v, c.v_full);
    const cpu::AttentionShape heads{shape.seq, shape.batch, shape.q_heads / plan_.cp, shape.kv_heads / plan_.cp,
                                    shape.head_dim};
    Mat attn_full(c.q_full.rows(), c.q_full.cols());
    cpu::attention_forward(heads, c.q_full, c.k_full, c.v_full, attn_full, keep_probs ? &c.probs : nullptr);
    cp_heads_to_rows(attn_full, c.attn);
  } else if (plan_.cp > 1) {
    cp_gather(c.k, c.k_full);
    cp_gather(c.v, c.v_full);
    const std::vector<std::int64_t> positions = cp_positions();
    cpu::attention_forward_cp(shape, positions, c.q, c.k_full, c.v_full, c.attn, keep_probs ? &c.probs : nullptr);
  } else {
    cpu::attention_forward(shape, c.q, c.k, c.v, c.attn, keep_probs ? &c.probs : nullptr);
  }
  Mat attn_out;
  row_parallel_forward(tp, c.attn, p.wo, p.bo, attn_out);
  c.x2 = x + attn_out;

  norm_forward(p.ln2, c.x2, c.h2, c.ln2_mean, c.ln2_rstd);
  enter_tp(tp, c.h2, c.h2_full);
  if (p.router >= 0) { // --- mixture of experts --- (tp = 1: no TP region around the experts)
    Mat moe_out;
    moe_forward(layer, p, c.h2_full, moe_out, c);
    out = c.x2 + moe_out;
  } else {
    const std::int64_t ffn_cols = params_.info(p.w1).cols;
    c.fc1.resize(rows, ffn_cols);
    c.act.resize(rows, ffn_cols);
    cpu::linear_forward(c.h2_full, weight(p.w1), bias(p.b1), c.fc1);
    if (spec_.gated_mlp) {
      c.gate.resize(rows, ffn_cols);
      cpu::linear_forward(c.h2_full, weight(p.wg), bias(p.bg), c.gate);
      cpu::swiglu_forward(c.gate, c.fc1, c.act);
    } else {
      cpu::gelu_forward(c.fc1, c.act);
    }
    Mat mlp_out;
    row_parallel_forward(tp, c.act, p.w2, p.b2, mlp_out);
    out = c.x2 + mlp_out;
  }
  c.complete = keep_all;
  if (!keep_all) {
    // Full recompute: keep only the layer input; backward reruns this forward (Korthikanti et al. 2022, sec. 5).
    LayerCache kept;
    kept.x = std::move(c.x);
    c = std::move(kept);
  }
}

void GptModel::linear_grads(const Mat& dy, const Mat& x, int weight_idx, int bias_idx, Mat& dx, bool accumulate_dx,
                            WeightGradWork* deferred) {
  if (deferred == nullptr) {
    cpu::linear_backward(dy, x, weight(weight_idx), dx, grad(weight_idx), bias_grad(bias_idx), accumulate_dx);
    return;
  }
  // The dgrad GEMM of cpu::linear_backward; the wgrad GEMM waits for apply_weight_grads.
  if (accumulate_dx) {
    dx.noalias() += dy * weight(weight_idx).transpose();
  } else {
    dx.noalias() = dy * weight(weight_idx).transpose();
  }
  deferred->items.push_back({weight_idx, bias_idx, false, dy, x});
}

void GptModel::apply_weight_grads(WeightGradWork& work) {
  for (const WeightGradWork::Item& item : work.items) {
    if (item.transposed) {
      grad(item.weight).noalias() += item.dy.transpose() * item.x;
    } else {
      grad(item.weight).noalias() += item.x.transpose() * item.dy;
    }
    if (item.bias >= 0) {
      Eigen::Map<cpu::RowVec>(bias_grad(item.bias), item.dy.cols()) += item.dy.colwise().sum();
    }
  }
  work.items.clear();
}

void GptModel::layer_backward(Communicator& tp, int layer, LayerCache& c, const Mat& dout, Mat& dx,
                              WeightGradWork* deferred) {
  if (!c.complete) {
    Mat ignored;
    const Mat input = std::move(c.x);
    recomputing_ = true;
    layer_forward(tp, layer, input, ignored, c, true);
    recomputing_ = false;
  }
  const LayerIdx& p = layer_idx(layer);
  const cpu::AttentionShape shape{spec_.seq_length, plan_.micro_batch_size, c.q.cols() / spec_.head_dim,
                                  c.k.cols() / spec_.head_dim, spec_.head_dim};
  const Eigen::Index rows = c.h1_full.rows();

  Mat dh2;
  if (p.router >= 0) { // --- mixture of experts ---
    Mat dh2_full;
    moe_backward(p, c, dout, dh2_full);
    leave_tp(tp, dh2_full, dh2);
  } else {
    // MLP branch: out = x2 + leave_tp(act W2) + b2.
    if (p.b2 >= 0) {
      Eigen::Map<cpu::RowVec>(params_.grad(p.b2), spec_.hidden_size) += dout.colwise().sum();
    }
    Mat dmlp_full;
    enter_tp(tp, dout, dmlp_full); // conjugate of leave_tp
    Mat dact(rows, c.act.cols());
    linear_grads(dmlp_full, c.act, p.w2, -1, dact, false, deferred);
    Mat dh2_full(rows, spec_.hidden_size);
    Mat dfc1(rows, c.fc1.cols());
    if (spec_.gated_mlp) {
      Mat dgate(rows, c.gate.cols());
      cpu::swiglu_backward(dact, c.gate, c.fc1, dgate, dfc1);
      linear_grads(dgate, c.h2_full, p.wg, p.bg, dh2_full, false, deferred);
      linear_grads(dfc1, c.h2_full, p.w1, p.b1, dh2_full, true, deferred);
    } else {
      cpu::gelu_backward(dact, c.fc1, dfc1);
      linear_grads(dfc1, c.h2_full, p.w1, p.b1, dh2_full, false, deferred);
    }
    leave_tp(tp, dh2_full, dh2); // conjugate of enter_tp
  }
  Mat dx2 = dout;
  norm_backward(p.ln2, dh2, c.x2, c.ln2_mean, c.ln2_rstd, dx2);

  // Attention branch: x2 = x + leave_tp(attn Wo) + bo.
  if (p.bo >= 0) {
    Eigen::Map<cpu::RowVec>(params_.grad(p.bo), spec_.hidden_size) += dx2.colwise().sum();
  }
  Mat dattn_out_full;
  enter_tp(tp, dx2, dattn_out_full);
  Mat dattn(rows, c.attn.cols());
  linear_grads(dattn_out_full, c.attn, p.wo, -1, dattn, false, deferred);
  Mat dq(rows, c.q.cols());
  Mat dk(rows, c.k.cols());
  Mat dv(rows, c.v.cols());
  if (cp_ulysses()) {
    const cpu::AttentionShape heads{shape.seq, shape.batch, shape.q_heads / plan_.cp, shape.kv_heads / plan_.cp,
                                    shape.head_dim};
    Mat dattn_full;
    cp_rows_to_heads(dattn, dattn_full);
    Mat dq_full(c.q_full.rows(), c.q_full.cols());
    Mat dk_full(c.k_full.rows(), c.k_full.cols());
    Mat dv_full(c.v_full.rows(), c.v_full.cols());
    cpu::attention_backward(heads, dattn_full, c.q_full, c.k_full, c.v_full, c.probs.size() > 0 ? &c.probs : nullptr,
                            dq_full, dk_full, dv_full);
    cp_heads_to_rows(dq_full, dq);
    cp_heads_to_rows(dk_full, dk);
    cp_heads_to_rows(dv_full, dv);
  } else if (plan_.cp > 1) {
    // Each CP rank's queries contribute to the K/V gradients of the whole sequence: sum over the CP group, keep
    // the rows of this rank's chunks.
    Mat dk_full(c.k_full.rows(), c.k_full.cols());
    Mat dv_full(c.v_full.rows(), c.v_full.cols());
    const std::vector<std::int64_t> positions = cp_positions();
    cpu::attention_backward_cp(shape, positions, dattn, c.q, c.k_full, c.v_full,
                               c.probs.size() > 0 ? &c.probs : nullptr, dq, dk_full, dv_full);
    cp_reduce_own_rows(dk_full, dk);
    cp_reduce_own_rows(dv_full, dv);
  } else {
    cpu::attention_backward(shape, dattn, c.q, c.k, c.v, c.probs.size() > 0 ? &c.probs : nullptr, dq, dk, dv);
  }
  if (!spec_.learned_position_embedding && plan_.cp > 1) {
    cp_rope(dq, false);
    cp_rope(dk, false);
  } else if (!spec_.learned_position_embedding) {
    cpu::rope_backward(dq, plan_.micro_batch_size, spec_.head_dim);
    cpu::rope_backward(dk, plan_.micro_batch_size, spec_.head_dim);
  }
  Mat dh1_full(rows, spec_.hidden_size);
  linear_grads(dq, c.h1_full, p.wq, p.bq, dh1_full, false, deferred);
  linear_grads(dk, c.h1_full, p.wk, p.bk, dh1_full, true, deferred);
  linear_grads(dv, c.h1_full, p.wv, p.bv, dh1_full, true, deferred);
  Mat dh1;
  leave_tp(tp, dh1_full, dh1);
  dx = std::move(dx2);
  norm_backward(p.ln1, dh1, c.x, c.ln1_mean, c.ln1_rstd, dx);
  c = LayerCache{};
}

// ---- final norm, output layer, loss

double GptModel::head_forward(Communicator& tp, const Mat& x, std::span<const std::int32_t> targets,
                              HeadCache& c) const {
  c.x = x;
  norm_forward(final_norm_, x, c.h, c.mean, c.rstd);
  enter_tp(tp, c.h, c.h_full);
  c.probs.noalias() = c.h_full * weight(head_w_).transpose(); // (T*B, V/tp) logits
  cpu::ColVec losses;
  cpu::vocab_parallel_cross_entropy_forward(c.probs, targets, params_.info(head_w_).row0, tp, losses);
  return static_cast<double>(losses.sum()) / static_cast<double>(losses.size());
}

void GptModel::head_backward(Communicator& tp, HeadCache& c, std::span<const std::int32_t> targets, float loss_scale,
                             Mat& dx, WeightGradWork* deferred) {
  const float scale = loss_scale / static_cast<float>(targets.size());
  Mat dlogits(c.probs.rows(), c.probs.cols());
  cpu::vocab_parallel_cross_entropy_backward(c.probs, targets, params_.info(head_w_).row0, scale, dlogits);
  Mat dh_full = dlogits * weight(head_w_);       // (T*B, C) partial over the vocab shards
  if (deferred == nullptr) {
    grad(head_w_).noalias() += dlogits.transpose() * c.h_full;
  } else {
    deferred->items.push_back({head_w_, -1, true, std::move(dlogits), c.h_full});
  }
  Mat dh;
  leave_tp(tp, dh_full, dh);
  dx = Mat::Zero(c.x.rows(), c.x.cols());
  norm_backward(final_norm_, dh, c.x, c.mean, c.rstd, dx);
  c = HeadCache{};
}

// ---- context parallelism

void GptModel::set_context_parallel(Communicator* cp, int cp_rank) {
  CUBOID_ASSERT(plan_.cp == 1 || (cp != nullptr && cp->size() == plan_.cp && cp_rank >= 0 && cp_rank < plan_.cp),
                "CP group of size {} for cp = {}, rank {}", cp == nullptr ? 0 : cp->size(), plan_.cp, cp_rank);
  CUBOID_ASSERT(plan_.cp == 1 || !plan_.sequence_parallel, "the CPU runtime runs CP without sequence parallelism");
  cp_ = cp;
  cp_rank_ = cp_rank;
}

std::int64_t GptModel::cp_chunk_rows() const {
  return spec_.seq_length / (2 * plan_.cp) * plan_.micro_batch_size;
}

std::array<int, 2> context_parallel_chunks(int cp, int cp_rank) { return {cp_rank, 2 * cp - 1 - cp_rank}; }

// Local position t < c is chunk cp_rank's t-th, t >= c chunk (2cp-1-cp_rank)'s (t-c)-th (c = T / 2cp).
// Example T = 8, cp = 2: rank 0 holds positions 0 1 6 7, rank 1 holds 2 3 4 5.
std::vector<std::int64_t> context_parallel_positions(std::int64_t seq, int cp, int cp_rank) {
  const std::int64_t chunk = seq / (2 * cp);
  const std::array<int, 2> chunks = context_parallel_chunks(cp, cp_rank);
  std::vector<std::int64_t> positions;
  positions.reserve(static_cast<std::size_t>(2 * chunk));
  for (std::int64_t t = 0; t < 2 * chunk; ++t) {
    positions.push_back(chunks[t < chunk ? 0 : 1] * chunk + t % chunk);
  }
  return positions;
}

std::vector<std::int64_t> GptModel::cp_positions() const {
  return context_parallel_positions(spec_.seq_length, plan_.cp, cp_rank_);
}

void GptModel::cp_rope(Mat& x, bool forward) const {
  const std::int64_t chunk = cp_chunk_rows();
  const std::array<int, 2> chunks = context_parallel_chunks(plan_.cp, cp_rank_);
  for (int half = 0; half < 2; ++half) {
    auto rows = x.middleRows(half * chunk, chunk);
    if (forward) {
      cpu::rope_forward(rows, plan_.micro_batch_size, spec_.head_dim, chunks[static_cast<std::size_t>(half)] * chunk);
    } else {
      cpu::rope_backward(rows, plan_.micro_batch_size, spec_.head_dim, chunks[static_cast<std::size_t>(half)] * chunk);
    }
  }
}

// All-gather of every CP rank's (2cB, cols) block, then each chunk to its place in the sequence: rank r's first half
// is chunk r, its second half chunk 2cp-1-r.
void GptModel::cp_gather(const Mat& local, Mat& full) const {
  const std::int64_t chunk = cp_chunk_rows();
  const Eigen::Index cols = local.cols();
  Mat gathered(plan_.cp * local.rows(), cols);
  cp_->all_gather(std::span<const float>(local.data(), static_cast<std::size_t>(local.size())),
                  std::span<float>(gathered.data(), static_cast<std::size_t>(gathered.size())));
  full.resize(spec_.seq_length * plan_.micro_batch_size, cols);
  for (int rank = 0; rank < plan_.cp; ++rank) {
    const auto [first, second] = context_parallel_chunks(plan_.cp, rank);
    full.middleRows(first * chunk, chunk) = gathered.middleRows(rank * local.rows(), chunk);
    full.middleRows(second * chunk, chunk) = gathered.middleRows(rank * local.rows() + chunk, chunk);
  }
}

void GptModel::cp_reduce_own_rows(Mat& full, Mat& local) const {
  cp_->all_reduce(std::span<float>(full.data(), static_cast<std::size_t>(full.size())));
  const std::int64_t chunk = cp_chunk_rows();
  local.resize(2 * chunk, full.cols());
  const auto [first, second] = context_parallel_chunks(plan_.cp, cp_rank_);
  local.topRows(chunk) = full.middleRows(first * chunk, chunk);
  local.bottomRows(chunk) = full.middleRows(second * chunk, chunk);
}

// Send block m: this rank's rows (its two chunks) of member m's head group; receive block m: member m's rows of
// this rank's head group, placed at member m's chunks of the sequence.
void GptModel::cp_rows_to_heads(const Mat& local, Mat& full) const {
  const std::int64_t chunk = cp_chunk_rows();
  const Eigen::Index rows = local.rows();
  CUBOID_ASSERT(rows == 2 * chunk && local.cols() % plan_.cp == 0, "cp_rows_to_heads: ({}, {}) for cp {}, chunk {}",
                rows, local.cols(), plan_.cp, chunk);
  const Eigen::Index group_cols = local.cols() / plan_.cp;
  Mat send(plan_.cp * rows, group_cols);
  for (int member = 0; member < plan_.cp; ++member) {
    send.middleRows(member * rows, rows) = local.middleCols(member * group_cols, group_cols);
  }
  Mat recv(send.rows(), group_cols);
  const std::vector<int> counts(static_cast<std::size_t>(plan_.cp), static_cast<int>(rows * group_cols));
  cp_->all_to_all_v(std::span<const float>(send.data(), static_cast<std::size_t>(send.size())), counts,
                    std::span<float>(recv.data(), static_cast<std::size_t>(recv.size())), counts);
  full.resize(plan_.cp * rows, group_cols);
  for (int member = 0; member < plan_.cp; ++member) {
    const auto [first, second] = context_parallel_chunks(plan_.cp, member);
    full.middleRows(first * chunk, chunk) = recv.middleRows(member * rows, chunk);
    full.middleRows(second * chunk, chunk) = recv.middleRows(member * rows + chunk, chunk);
  }
}

void GptModel::cp_heads_to_rows(const Mat& full, Mat& local) const {
  const std::int64_t chunk = cp_chunk_rows();
  const Eigen::Index rows = 2 * chunk;
  CUBOID_ASSERT(full.rows() == plan_.cp * rows, "cp_heads_to_rows: {} rows for cp {}, chunk {}", full.rows(),
                plan_.cp, chunk);
  const Eigen::Index group_cols = full.cols();
  Mat send(full.rows(), group_cols);
  for (int member = 0; member < plan_.cp; ++member) {
    const auto [first, second] = context_parallel_chunks(plan_.cp, member);
    send.middleRows(member * rows, chunk) = full.middleRows(first * chunk, chunk);
    send.middleRows(member * rows + chunk, chunk) = full.middleRows(second * chunk, chunk);
  }
  Mat recv(send.rows(), group_cols);
  const std::vector<int> counts(static_cast<std::size_t>(plan_.cp), static_cast<int>(rows * group_cols));
  cp_->all_to_all_v(std::span<const float>(send.data(), static_cast<std::size_t>(send.size())), counts,
                    std::span<float>(recv.data(), static_cast<std::size_t>(recv.size())), counts);
  local.resize(rows, plan_.cp * group_cols);
  for (int member = 0; member < plan_.cp; ++member) {
    local.middleCols(member * group_cols, group_cols) = recv.middleRows(member * rows, rows);
  }
}

} // namespace cuboid::exec
