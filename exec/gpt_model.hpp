// GptModel: this rank's shard of a decoder-only transformer (GPT: LayerNorm, GeLU, learned positions, biases;
// Llama-style: RMSNorm, SwiGLU, GQA, RoPE, no biases) for one pipeline stage (all its chunks) and one TP rank, with the
// forward and backward of its units (embedding, transformer layer, final norm + output layer + loss).
// Megatron tensor parallelism: QKV and fc1 column-parallel, proj and fc2 row-parallel, vocab-parallel embedding
// and cross-entropy; with sequence parallelism the activations between TP regions hold T*B/tp rows.
// Activations use Megatron's [s, b] row order (row = t * B + b). Models without learned positions use rotary
// embeddings (RoPE) on Q and K.
#pragma once

#include "exec/communicator.hpp"
#include "exec/cpu/moe.hpp"
#include "exec/cpu/tensor.hpp"
#include "exec/param_set.hpp"
#include "model/schedule.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

#include <array>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace cuboid::exec {

/// Saved activations of one layer for one micro-batch. With full recompute only `x` is kept between forward and
/// backward; with selective recompute the attention probabilities are not kept.
struct LayerCache {
  cpu::Mat x;                 // (n, C) layer input (n = T*B, or T*B/tp with sequence parallelism)
  cpu::Mat h1, h1_full;       // ln1 output (n, C); all-gathered (T*B, C) under SP
  cpu::ColVec ln1_mean, ln1_rstd;
  cpu::Mat q, k, v;           // (T*B, Hl*D), (T*B, Gl*D), (T*B, Gl*D)
  cpu::Mat probs;             // (B*Hl*T, T), empty under selective recompute
  cpu::Mat attn;              // (T*B, Hl*D) attention output before proj
  cpu::Mat x2;                // (n, C) after the attention residual
  cpu::Mat h2, h2_full;
  cpu::ColVec ln2_mean, ln2_rstd;
  cpu::Mat fc1, gate;         // (T*B, F/tp) pre-activation (up projection), gate for SwiGLU
  cpu::Mat act;               // (T*B, F/tp)
  bool complete = false;      // false when only x was kept (full recompute)
  // --- context parallelism --- (T*B above is then this CP rank's 2 chunks: T/cp*B rows)
  cpu::Mat k_full, v_full;    // (T*B, Gl*D) K and V of the whole sequence, all-gathered over the CP group; with
                              // cp_comm_type a2a (Ulysses) (T*B, Gl/cp*D): the whole sequence for head group cp_rank
  cpu::Mat q_full;            // a2a only: (T*B, Hl/cp*D) Q of the whole sequence for head group cp_rank
  // --- mixture of experts --- (MoE layers: the MLP fields above stay empty)
  cpu::TopKRouting routing;          // the K experts and gates of each of the n tokens
  std::vector<int> dispatch_slots;   // (n*K) token slot n*K+k of each dispatched row, in send order
  std::vector<int> send_counts;      // floats sent to each EP member (dispatch direction)
  std::vector<int> recv_counts;      // floats received from each EP member
  std::vector<int> recv_expert_rows; // (ep * E/ep) rows received from member p for local expert l at [p*E/ep + l]
  std::vector<cpu::Mat> expert_x, expert_fc1, expert_gate, expert_act; // per local expert: (rows_l, C), (rows_l, F_e)
  cpu::Mat expert_out;               // (n*K, C) expert output of token slot n*K+k, back on this rank
};

struct HeadCache {
  cpu::Mat x;                 // (n, C)
  cpu::Mat h, h_full;         // final norm output; all-gathered under SP
  cpu::ColVec mean, rstd;
  cpu::Mat probs;             // (T*B, V/tp) softmax of the logits
};

// --- zero-bubble schedules ---
/// The weight-gradient half (W) of a backward that zb-h1 / zb-v defer (Qi et al. 2024): per linear layer the output
/// gradient dY and input X whose dW += X^T dY (db += column sums of dY) have not run yet. Filled by the backward's
/// input-gradient half (B), consumed by GptModel::apply_weight_grads.
struct WeightGradWork {
  struct Item {
    int weight = -1;          // parameter index of W (k, n); the head's output layer is stored (V/tp, C)
    int bias = -1;            // -1 without bias
    bool transposed = false;  // head output layer: dW += dY^T X
    cpu::Mat dy;              // (rows, n)
    cpu::Mat x;               // (rows, k)
  };
  std::vector<Item> items;
};

/// --- context parallelism --- The two of the 2cp equal sequence chunks that CP rank `cp_rank` holds, in its row
/// order: cp_rank and 2cp-1-cp_rank (Megatron's load-balanced causal split, get_batch_on_this_cp_rank).
std::array<int, 2> context_parallel_chunks(int cp, int cp_rank);
/// The global sequence position of each of the T/cp positions a CP rank holds, in its row order.
std::vector<std::int64_t> context_parallel_positions(std::int64_t seq, int cp, int cp_rank);

class GptModel;

/// The full model's parameters (tp = pp = dp = 1) in canonical order, without buffers.
std::vector<ParamInfo> canonical_params(const model::ModelSpec& spec);

class GptModel {
public:
  /// Declares and initialises this rank's parameters from `seed` (identical values to the single-rank model).
  /// With materialize = false only the parameter list is built (no buffers): canonical_params().
  /// MoE models: `ep_rank` (0 .. plan.ep-1) is this rank's place in its EP group; it holds routed experts
  /// [ep_rank * E/ep, (ep_rank + 1) * E/ep) of every MoE layer.
  GptModel(const model::ModelSpec& spec, const model::Plan& plan, int tp_rank, int pp_rank, std::uint64_t seed,
           bool materialize = true, int ep_rank = 0);

  /// Rows of an activation between TP regions: T*B, or T*B/tp with sequence parallelism.
  [[nodiscard]] std::int64_t activation_rows() const;
  [[nodiscard]] std::int64_t hidden() const { return spec_.hidden_size; }
  [[nodiscard]] const std::vector<model::ChunkLayout>& chunks() const { return chunks_; }
  [[nodiscard]] ParamSet& params() { return params_; }
  [[nodiscard]] const ParamSet& params() const { return params_; }
  /// Parameter indices used by a unit (for mapping gradient buckets to the backward that finishes them).
  [[nodiscard]] std::vector<int> embedding_params() const;
  [[nodiscard]] std::vector<int> layer_params(int layer) const;
  [[nodiscard]] std::vector<int> head_params() const;

  /// tokens: (T*B) in [s, b] order; out: (n, C).
  void embedding_forward(Communicator& tp, std::span<const std::int32_t> tokens, cpu::Mat& out) const;
  void embedding_backward(Communicator& tp, std::span<const std::int32_t> tokens, const cpu::Mat& dout);
  /// keep_all = false stores only the input (full recompute).
  void layer_forward(Communicator& tp, int layer, const cpu::Mat& x, cpu::Mat& out, LayerCache& cache,
                     bool keep_all) const;
  /// dx overwritten with the gradient of the layer input; consumes the cache (recomputes it if incomplete).
  /// With `deferred` (zero-bubble B) the weight gradients of the linear layers are not accumulated but queued there.
  void layer_backward(Communicator& tp, int layer, LayerCache& cache, const cpu::Mat& dout, cpu::Mat& dx,
                      WeightGradWork* deferred = nullptr);
  /// Mean cross-entropy over the micro-batch's T*B tokens (the same value on every TP rank).
  [[nodiscard]] double head_forward(Communicator& tp, const cpu::Mat& x, std::span<const std::int32_t> targets,
                                    HeadCache& cache) const;
  /// loss_scale: d(step loss)/d(micro-batch mean loss), e.g. 1 / (m * dp).
  void head_backward(Communicator& tp, HeadCache& cache, std::span<const std::int32_t> targets, float loss_scale,
                     cpu::Mat& dx, WeightGradWork* deferred = nullptr);
  /// Zero-bubble W: accumulates the queued weight (and bias) gradients and empties `work`.
  void apply_weight_grads(WeightGradWork& work);

  // --- context parallelism ---
  /// Makes this model a CP rank: `cp` (size plan.cp, not owned, must outlive the model) is the CP group and cp_rank
  /// this rank's place in it. The rank then holds sequence chunks cp_rank and 2cp-1-cp_rank of 2cp equal chunks
  /// (Megatron's load-balanced causal split); inputs, activations and targets are those rows, in [s, b] order.
  /// Attention all-gathers K and V over the CP group (not a ring: the same result with one collective) and
  /// sum-reduces their gradients. Without sequence parallelism only.
  void set_context_parallel(Communicator* cp, int cp_rank);
  /// Global position of each of this rank's T/cp sequence positions (all of 0..T-1 when cp = 1).
  [[nodiscard]] std::vector<std::int64_t> cp_positions() const;

  // --- mixture of experts ---
  /// Makes the MoE layers dispatch over `ep` (the EP group, size plan.ep, this rank at position ep_rank; not owned,
  /// must outlive the model). Required before the first MoE layer runs when ep > 1; without it a model with ep = 1
  /// dispatches to itself.
  void set_expert_parallel(Communicator* ep);
  /// Elements of the flat buffers before the routed experts: the routed-expert parameters of the stage are laid
  /// out last (per chunk contiguous), so the DP buckets cover [0, dense_param_elements()) only.
  [[nodiscard]] std::size_t dense_param_elements() const;
  /// Flat range [begin, end) of the routed-expert parameters of local chunk `chunk` (empty when it has none).
  [[nodiscard]] std::pair<std::size_t, std::size_t> expert_param_range(int chunk) const;
  /// Smallest router top-k margin (router_topk_margin) over every MoE forward this model ran; +inf without any.
  [[nodiscard]] double min_router_margin() const { return min_router_margin_; }
  /// Order-independent fingerprint of every routing decision this model made in forwards (not in recomputes): the
  /// wrapping sum over (layer, row of the micro-batch, set of chosen experts) of a 64-bit hash. Two runs that
  /// routed every token of every micro-batch alike have equal sums over their ranks (any single flip changes it).
  [[nodiscard]] std::uint64_t routing_fingerprint() const { return routing_fingerprint_; }

private:
  struct NormIdx {
    int w = -1;
    int b = -1; // -1 for RMSNorm
  };
  struct LayerIdx {
    NormIdx ln1, ln2;
    int wq = -1, bq = -1, wk = -1, bk = -1, wv = -1, bv = -1, wo = -1, bo = -1;
    int w1 = -1, b1 = -1, wg = -1, bg = -1, w2 = -1, b2 = -1;
    // --- mixture of experts --- (MoE layers have no w1..b2 above)
    struct Expert { // an MLP's parameters (declare_mlp): each routed expert's, and a dense layer's copied to w1..b2
      int w1 = -1, b1 = -1, wg = -1, bg = -1, w2 = -1, b2 = -1;
    };
    int router = -1;             // (C, E), replicated, no bias
    std::vector<Expert> experts; // this rank's E/ep routed experts, local index l = global expert - first_expert_
  };

  void declare_params();
  /// The MLP parameters "<prefix>w2", "b2", "w1", "b1", "wg", "bg" (biases with linear_bias, wg/bg when gated),
  /// hidden width `ffn`, in that declaration order: a dense layer's ("layers.N.mlp.") and each expert's.
  LayerIdx::Expert declare_mlp(const std::string& prefix, std::int64_t ffn);
  NormIdx add_norm(const std::string& name);
  void norm_forward(const NormIdx& idx, const cpu::Mat& x, cpu::Mat& y, cpu::ColVec& mean, cpu::ColVec& rstd) const;
  void norm_backward(const NormIdx& idx, const cpu::Mat& dy, const cpu::Mat& x, const cpu::ColVec& mean,
                     const cpu::ColVec& rstd, cpu::Mat& dx);
  [[nodiscard]] cpu::ConstMatMap weight(int idx) const;
  [[nodiscard]] cpu::MatMap grad(int idx);
  [[nodiscard]] const float* bias(int idx) const;
  [[nodiscard]] float* bias_grad(int idx);
  /// Enter a column-parallel region: all-gather rows under SP (else identity).
  void enter_tp(Communicator& tp, const cpu::Mat& local, cpu::Mat& full) const;
  /// Leave a row-parallel region: reduce-scatter under SP, else all-reduce (in place), result in `out`.
  void leave_tp(Communicator& tp, cpu::Mat& partial, cpu::Mat& out) const;
  /// Row-parallel linear (Megatron's RowParallelLinear) forward: this rank's shard of in x W, reduced over TP
  /// (leave_tp), then the replicated bias `bias_idx` (< 0: none) added once, after the reduction.
  void row_parallel_forward(Communicator& tp, const cpu::Mat& in, int weight_idx, int bias_idx, cpu::Mat& out) const;
  [[nodiscard]] const LayerIdx& layer_idx(int layer) const;
  /// cpu::linear_backward, or with `deferred` only its dX part, queueing (dY, X) for apply_weight_grads.
  void linear_grads(const cpu::Mat& dy, const cpu::Mat& x, int weight_idx, int bias_idx, cpu::Mat& dx,
                    bool accumulate_dx, WeightGradWork* deferred);

  model::ModelSpec spec_;
  model::Plan plan_;
  int tp_rank_;
  int pp_rank_;
  std::vector<model::ChunkLayout> chunks_;
  ParamSet params_;
  int wte_ = -1;       // (V/tp, C) word embedding (embedding stage, and head stage when tied)
  int wpe_ = -1;       // (T, C) learned positions
  int head_w_ = -1;    // (V/tp, C) output layer (== wte_ when tied on the same stage)
  NormIdx final_norm_;
  int first_layer_ = 0;
  std::vector<LayerIdx> layers_; // indexed by layer - first_layer_ (layers of this stage, all chunks)
  std::vector<int> layer_slot_;  // global layer -> index into layers_, -1 if not on this stage
  // --- context parallelism ---
  Communicator* cp_ = nullptr;   // CP group (plan.cp > 1), not owned
  int cp_rank_ = 0;
  [[nodiscard]] std::int64_t cp_chunk_rows() const; // rows of one of the 2cp chunks: T/(2cp) * B
  void cp_rope(cpu::Mat& x, bool forward) const;
  void cp_gather(const cpu::Mat& local, cpu::Mat& full) const;
  void cp_reduce_own_rows(cpu::Mat& full, cpu::Mat& local) const;
  // Ulysses (cp_comm_type a2a): this rank's rows of all its heads -> the whole sequence's rows (in sequence order) of
  // head group cp_rank (cols/cp columns), by one all-to-all over the CP group; cp_heads_to_rows is the inverse.
  [[nodiscard]] bool cp_ulysses() const { return plan_.cp > 1 && plan_.cp_comm_type == model::CpCommType::A2A; }
  void cp_rows_to_heads(const cpu::Mat& local, cpu::Mat& full) const;
  void cp_heads_to_rows(const cpu::Mat& full, cpu::Mat& local) const;
  // --- mixture of experts --- (gpt_model_moe.cpp)
  int ep_rank_ = 0;
  Communicator* ep_ = nullptr;   // EP group, not owned
  mutable double min_router_margin_ = std::numeric_limits<double>::infinity(); // diagnostics of const forwards
  mutable std::uint64_t routing_fingerprint_ = 0;
  bool recomputing_ = false; // layer_backward's rerun of the forward (not a new routing decision)
  /// The EP group, or `self` (a group of one) when none was set and plan.ep == 1.
  [[nodiscard]] Communicator& ep_group(Communicator& self) const;
  void declare_moe_router(LayerIdx& p, const std::string& prefix);
  void declare_moe_experts(); // after every dense parameter: see dense_param_elements()
  /// h: (n, C) the ln2 output; y: (n, C) overwritten with the weighted sum of the chosen experts' outputs.
  void moe_forward(int layer, const LayerIdx& p, const cpu::Mat& h, cpu::Mat& y, LayerCache& c) const;
  /// dy: (n, C); dh: (n, C) overwritten; accumulates the router and local expert gradients.
  void moe_backward(const LayerIdx& p, LayerCache& c, const cpu::Mat& dy, cpu::Mat& dh);
  void moe_expert_forward(const LayerIdx::Expert& e, int local, LayerCache& c, cpu::Mat& out) const;
  void moe_expert_backward(const LayerIdx::Expert& e, int local, LayerCache& c, const cpu::Mat& dout, cpu::Mat& dx);
};

} // namespace cuboid::exec
