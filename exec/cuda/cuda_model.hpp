// CudaGptModel: the CUDA counterpart of exec::GptModel (gpt_model.hpp) for one pipeline stage and one TP rank, with
// the same parameters (names, TP splits, initial values from the same counter-based generator) and the same units
// (embedding, transformer layer, final norm + output layer + loss), on the device. Mixed precision as Megatron:
// fp32 master weights, a bf16 copy of them for the GEMMs and embeddings, bf16 activations, fp32 gradients
// (accumulated over micro-batches by cuBLASLt with beta = 1), fp32 norm statistics, attention LSE, logits and
// loss. GEMMs via cuBLASLt (gemm.hpp), everything else via kernels/. TP collectives (all-reduce of the
// row-parallel fp32 partial outputs, of the column-parallel input gradients, and the cross-entropy's max / sums) go
// through the TP Communicator on device memory, stream-ordered on the compute stream, and so do the all-gathers and
// reduce-scatters of sequence parallelism. All work is enqueued on one stream without host syncs.
// Distributed optimizer (DpSharding::shard_optimizer): the fp32 master weights and both AdamW moments hold only this
// DP rank's pieces of the flat buffers (OptimizerShards, Megatron-Core's layout: 12 bytes per parameter / dp); the
// forward then reads what Megatron's does, the bf16 model copy: the embedding tables directly, the norm weights and
// biases through a small fp32 replica widened from it after every parameter all-gather. ZeRO-2
// (DpSharding::shard_grads) also shards the reduced fp32 gradients: each bucket has a gradient buffer of its own,
// allocated at its first write and freed by the reduce-scatter that adds this rank's piece to sharded_grads().
// ZeRO-3 (DpSharding::shard_params) also shards the bf16 copy: gather_params() assembles a unit's buckets before it
// runs, release_params() frees them after.
#pragma once

#include "exec/communicator.hpp"
#include "exec/cuda/cuda_layout.hpp"
#include "exec/cuda/device_buffer.hpp"
#include "exec/cuda/gemm.hpp"
#include "exec/gpt_model.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace cuboid::exec::cuda {

using Bf16Buffer = DeviceBuffer<__nv_bfloat16>;
using F32Buffer = DeviceBuffer<float>;

/// What the model needs from the runtime: the compute stream, the GEMM runner and its workspace, the TP group.
struct CudaContext {
  cudaStream_t stream = nullptr;
  GemmRunner* gemm = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  Communicator* tp = nullptr; // device-memory communicator (NcclCommunicator); only used when tp > 1
  /// Tensor-core attention (kernels/attention_tc.cuh) where its shape requirements hold; else, or when false, the
  /// scalar-FMA kernels (kernels/attention.cuh).
  bool tensor_core_attention = true;
  /// --- context parallelism --- The CP group (device-memory communicator; only used when cp > 1) and this rank's
  /// place in it.
  Communicator* cp = nullptr;
  int cp_rank = 0;
};

/// How the DP group shares the flat parameter buffers: the gradient buckets (the program's bucket weights, in
/// buffer order) and, for the distributed optimizer, the partition of the optimizer state.
struct DpSharding {
  std::vector<double> bucket_weights; // Program::bucket_weights; empty: no DP reduction
  int dp = 1;
  int dp_rank = 0;
  bool shard_optimizer = false;       // Megatron's --use-distributed-optimizer with dp > 1
  bool shard_grads = false;           // ZeRO-2 (with shard_optimizer): the reduced fp32 gradients sharded too
  bool shard_params = false;          // ZeRO-3 / FSDP (with shard_grads): the bf16 copy sharded, gathered per unit
  /// Whether anything is sharded (a DP group of one shards nothing).
  [[nodiscard]] bool shards() const { return (shard_optimizer || shard_grads || shard_params) && dp > 1; }
};

/// Saved activations of one layer for one micro-batch (as exec::LayerCache; the attention keeps its LSE instead of
/// the probabilities, so selective recompute costs nothing extra).
struct CudaLayerCache {
  Bf16Buffer x, h1, q, k, v, attn, x2, h2, fc1, gate, act;
  F32Buffer ln1_mean, ln1_rstd, ln2_mean, ln2_rstd, lse;
  bool complete = false; // false when only x was kept (full recompute)
};

// --- zero-bubble schedules ---
/// The weight-gradient half (W) of a backward that zb-h1 / zb-v defer (as exec::WeightGradWork): per linear layer
/// the GEMM dW += A^T B (A: the layer input X, or for the output layer dY; B: the other) with the column sums of B
/// into its bias, and the operands, kept alive (shared where two layers read one input) until W runs.
struct CudaWeightGradWork {
  struct Item {
    int weight = -1;                 // gradient grad(weight) (m, n) += a^T (k, m) b (k, n)
    int bias = -1;                   // -1 without; else += column sums of b
    std::int64_t m = 0, n = 0, k = 0;
    std::shared_ptr<const Bf16Buffer> a, b;
  };
  std::vector<Item> items;
};

struct CudaHeadCache {
  Bf16Buffer x, h;
  F32Buffer mean, rstd;
  F32Buffer probs; // (n, V/tp) fp32 logits, then softmax probabilities
};

class CudaGptModel {
public:
  /// Declares this rank's parameters (exec::GptModel's list) and initialises them on the device from `seed`.
  CudaGptModel(const model::ModelSpec& spec, const model::Plan& plan, int tp_rank, int pp_rank, std::uint64_t seed,
               const CudaContext& context, const DpSharding& sharding = {});

  /// Rows of the activations between layers: the micro-batch's tokens, divided over TP under sequence parallelism
  /// (this rank's share of the sequence, rows [tp_rank * n, (tp_rank + 1) * n) in [s, b] order).
  [[nodiscard]] std::int64_t activation_rows() const {
    return sequence_parallel() ? token_rows() / plan_.tp : token_rows();
  }
  /// Rows of the GEMMs and the attention: every token of the micro-batch (this CP rank's T/cp positions of it).
  [[nodiscard]] std::int64_t token_rows() const { return spec_.seq_length * plan_.micro_batch_size / plan_.cp; }
  /// --- context parallelism --- Global position of each of this rank's T/cp sequence positions, in row order
  /// (exec::context_parallel_positions): the runtime feeds the model these rows of every micro-batch. As the CPU
  /// backend (exec::GptModel::set_context_parallel) and Transformer Engine's all-gather variant (Megatron's
  /// --cp-comm-type all_gather): each layer all-gathers K and V over the CP group, runs the attention once per
  /// local chunk against the keys up to it (kernels' q_offset), and reduce-scatters dK and dV; the cache keeps
  /// this rank's rows of K and V and the backward gathers them again. No sequence parallelism with it (as the CPU
  /// backend).
  [[nodiscard]] std::vector<std::int64_t> cp_positions() const;
  /// Megatron's sequence parallelism (Korthikanti et al. 2022, sec. 4.2.2): norms, residuals and dropout-free
  /// elementwise work on 1/tp of the sequence; all-gather before the column-parallel GEMMs, reduce-scatter after the
  /// row-parallel ones.
  [[nodiscard]] bool sequence_parallel() const { return plan_.sequence_parallel && plan_.tp > 1; }
  [[nodiscard]] std::int64_t hidden() const { return spec_.hidden_size; }
  /// Which attention kernels this model's layers use: "tensor-core (WMMA bf16)" or "scalar fp32 (...)".
  [[nodiscard]] std::string attention_kernel() const;
  /// Parameter list and unit -> parameter maps, from exec::GptModel (host, no buffers).
  [[nodiscard]] const GptModel& host_layout() const { return layout_; }
  [[nodiscard]] const std::vector<ParamInfo>& infos() const { return layout_.params().infos(); }
  [[nodiscard]] const DeviceParamLayout& device_layout() const { return device_; }
  /// DP gradient buckets over the flat buffers (from DpSharding::bucket_weights).
  [[nodiscard]] const std::vector<BucketRange>& buckets() const { return buckets_; }
  /// Whether the optimizer state is sharded over DP, and how (segments per bucket, this rank's pieces; unsharded:
  /// one piece, the whole flat buffer).
  [[nodiscard]] bool shards_optimizer() const { return shards_.dp > 1; }
  [[nodiscard]] const OptimizerShards& optimizer_shards() const { return shards_; }
  /// Unsharded: fp32 master values of parameter idx. Sharded: the compact buffers below hold this rank's pieces.
  [[nodiscard]] float* master(int idx) const;
  /// Base pointers of the master values, the moments (compact when sharded: OwnedPiece::shard_offset) and the
  /// bf16 copy (always full).
  [[nodiscard]] float* masters() const { return master_.get(); }
  [[nodiscard]] float* moments1() const { return m_.get(); }
  [[nodiscard]] float* moments2() const { return v_.get(); }
  [[nodiscard]] __nv_bfloat16* weights() const;
  /// ZeRO-3: this rank's pieces of the bf16 copy (compact, at OwnedPiece::shard_offset), written by AdamW.
  [[nodiscard]] bool shards_params() const { return shard_params_; }
  [[nodiscard]] __nv_bfloat16* sharded_weights() const { return bf16_shard_.get(); }
  /// ZeRO-3: all-gathers the buckets holding `params` over `dp` into whole bf16 buffers (counted: a bucket two units
  /// share is gathered once) and widens their norm weights and biases into the fp32 replica; release() frees a
  /// bucket when its last gather is released (FSDP's reshard after forward and after backward).
  void gather_params(Communicator& dp, const std::vector<int>& params);
  void release_params(const std::vector<int>& params);
  /// Sharded: widens the norm weights and biases (all, or parameter idx if it is one) from the freshly gathered bf16
  /// copy into their fp32 replica.
  void refresh_replicas();
  void refresh_replica(int idx);
  /// fp32 gradient of parameter idx. ZeRO-2: in its bucket's buffer, allocated (zeroed) at the first call after the
  /// bucket was last scattered (scatter_grads), so only the buckets between two scatters are whole on the device.
  [[nodiscard]] float* grad(int idx) const;
  /// The bf16 copy of parameter idx (ZeRO-3: in its gathered bucket; reading one not gathered is an internal error).
  [[nodiscard]] __nv_bfloat16* weight(int idx) const;
  /// The full gradient buffer (not under ZeRO-2, whose reduced gradients are this rank's pieces: sharded_grads()).
  [[nodiscard]] float* grads() const;
  /// ZeRO-2: this rank's pieces of the reduced gradients, accumulated over the step's micro-batches (compact, at
  /// OwnedPiece::shard_offset).
  [[nodiscard]] bool shards_grads() const { return shard_grads_; }
  [[nodiscard]] float* sharded_grads() const { return shard_grad_buffer_.get(); }
  /// ZeRO-2: reduce-scatters every bucket buffer that holds gradients over `dp` (in place, one collective per
  /// segment), adds this rank's pieces to sharded_grads() and frees the buffers. Every DP member calls it at the same
  /// program points.
  void scatter_grads(Communicator& dp);
  /// The same for bucket kb alone (a no-op when it holds no gradients).
  void scatter_bucket(Communicator& dp, std::size_t kb);
  /// ZeRO-2: the gradient bucket holding parameter idx (-1 otherwise).
  [[nodiscard]] int bucket_of(int idx) const;
  void zero_grads();

  /// tokens: device (T*B) in [s, b] order; out: (n, C).
  void embedding_forward(const std::int32_t* tokens, Bf16Buffer& out);
  void embedding_backward(const std::int32_t* tokens, const Bf16Buffer& dout);
  /// Takes the layer input (saved in the cache for backward: moved, not copied).
  void layer_forward(int layer, Bf16Buffer&& x, Bf16Buffer& out, CudaLayerCache& cache, bool keep_all);
  /// dx overwritten; consumes the cache (recomputes it if incomplete) and dout (its buffer becomes dx). With
  /// `deferred` (zero-bubble B) the weight GEMMs of the linear layers are queued there instead of run.
  void layer_backward(int layer, CudaLayerCache& cache, Bf16Buffer&& dout, Bf16Buffer& dx,
                      CudaWeightGradWork* deferred = nullptr);
  /// Adds loss_weight * (mean cross-entropy over the T*B tokens) to loss_acc[0] (device) unless loss_acc is null.
  /// Takes the head input (saved in the cache).
  void head_forward(Bf16Buffer&& x, const std::int32_t* targets, CudaHeadCache& cache, float* loss_acc,
                    float loss_weight);
  void head_backward(CudaHeadCache& cache, const std::int32_t* targets, float loss_scale, Bf16Buffer& dx,
                     CudaWeightGradWork* deferred = nullptr);
  /// Zero-bubble W: runs the queued weight GEMMs (and bias sums) and empties `work`.
  void apply_weight_grads(CudaWeightGradWork& work);

private:
  struct NormIdx {
    int w = -1;
    int b = -1;
  };
  struct LayerIdx {
    NormIdx ln1, ln2;
    int wq = -1, bq = -1, wk = -1, bk = -1, wv = -1, bv = -1, wo = -1, bo = -1;
    int w1 = -1, b1 = -1, wg = -1, bg = -1, w2 = -1, b2 = -1;
  };
  [[nodiscard]] const LayerIdx& layer_idx(int layer) const;
  [[nodiscard]] int find(const std::string& name) const;
  [[nodiscard]] NormIdx norm_idx(const std::string& prefix) const;
  void initialise(std::uint64_t seed);
  /// initialise() for the flat range [begin, end) (whole tensors), written into `scratch` (end - begin floats).
  void initialise_range(std::uint64_t seed, std::size_t begin, std::size_t end, float* scratch);
  void setup_sharding(const DpSharding& sharding);
  /// fp32 values of a norm weight or bias as the forward reads them: the master (unsharded) or the replica.
  [[nodiscard]] const float* value32(int idx) const;

  // --- context parallelism ---
  [[nodiscard]] bool context_parallel() const { return plan_.cp > 1; }
  /// Rows of one of the 2cp chunks: T/(2cp) * B.
  [[nodiscard]] std::int64_t cp_chunk_rows() const;
  /// A run of query rows of the attention: `seq` positions from global position q_offset, at local row `row0`.
  struct AttentionSegment {
    std::int64_t seq = 0;
    std::int64_t q_offset = 0;
    std::int64_t row0 = 0;
  };
  /// The whole sequence, or with CP the two local chunks, cp_rank and 2cp-1-cp_rank (each against the keys up to
  /// its end).
  [[nodiscard]] std::vector<AttentionSegment> attention_segments() const;
  /// K or V (local rows, `cols` wide) all-gathered over CP into `full`, the whole sequence in position order;
  /// returns full.get().
  const __nv_bfloat16* cp_gather(const Bf16Buffer& local, std::int64_t cols, Bf16Buffer& full);
  /// Conjugate of cp_gather: the sum over CP of the whole-sequence gradients, this rank's rows of it.
  void cp_reduce_scatter(const Bf16Buffer& full, std::int64_t cols, Bf16Buffer& local);
  /// Ulysses (cp_comm_type a2a, DeepSpeed-Ulysses / TE AttnFuncWithCPAndQKVOA2A): the attention runs over the whole
  /// sequence for heads/cp of this rank's heads, reached by all-to-alls over the CP group.
  [[nodiscard]] bool ulysses() const { return context_parallel() && plan_.cp_comm_type == model::CpCommType::A2A; }
  /// The attention kernels' query runs: attention_segments(), or under Ulysses the whole sequence at once.
  [[nodiscard]] std::vector<AttentionSegment> core_segments() const;
  /// Heads the attention kernels see of this rank's `heads`: heads / cp under Ulysses.
  [[nodiscard]] std::int64_t core_heads(std::int64_t heads) const { return ulysses() ? heads / plan_.cp : heads; }
  /// This rank's rows (`cols` wide, all its heads) -> the whole sequence's rows, in position order, of head group
  /// cp_rank (cols / cp wide), by one all-to-all; cp_heads_to_rows is the inverse (`cols` = the full width).
  void cp_rows_to_heads(const Bf16Buffer& local, std::int64_t cols, Bf16Buffer& full);
  void cp_heads_to_rows(const Bf16Buffer& full, std::int64_t cols, Bf16Buffer& local);
  /// RoPE of this rank's rows (each local chunk at its positions), forward or backward.
  void rope(Bf16Buffer& x, std::int64_t heads, bool forward);
  /// Rows [row0, row0 + rows) of the activations hold consecutive positions from first_row / B on (the position
  /// embedding's runs: one, or under CP the two local chunks).
  struct PositionRun {
    std::int64_t row0 = 0;
    std::int64_t first_row = 0;
    std::int64_t rows = 0;
  };
  [[nodiscard]] std::vector<PositionRun> position_runs() const;
  /// Empty when the tensor-core attention takes every segment's shape; else why not.
  [[nodiscard]] std::string tensor_core_unsupported_reason() const;

  // Building blocks (all on context_.stream).
  void gemm(std::int64_t m, std::int64_t n, std::int64_t k, bool trans_a, bool trans_b, const void* a, const void* b,
            void* c, GemmDType c_type, float beta);
  /// y (rows, out) = x (rows, in) W (in, out) [+ bias] [+ residual], bf16 out; bias and residual in the GEMM's
  /// epilogue (a bias kernel where cuBLASLt has no algorithm with it).
  void linear(const Bf16Buffer& x, int w, int bias, std::int64_t rows, Bf16Buffer& y,
              const Bf16Buffer* residual = nullptr);
  /// out = residual + TP all-reduce(in W) + bias: the row-parallel linear of Megatron (attention projection, fc2)
  /// with the bias-residual add; tp = 1: all in the GEMM (linear with residual), else fp32 partials + one kernel.
  void row_parallel_linear(const Bf16Buffer& in, int w, int bias, const Bf16Buffer& residual, Bf16Buffer& out);
  /// Weight and bias gradients of linear(): dW += x^T dy, db += colsum(dy).
  void linear_wgrad(const Bf16Buffer& x, const Bf16Buffer& dy, int w, int bias, std::int64_t rows);
  /// grad(weight) += a^T b (+ column sums of b into bias): now, or queued in `deferred` (zero-bubble B).
  void weight_grad(CudaWeightGradWork* deferred, int weight, int bias, std::int64_t m, std::int64_t n, std::int64_t k,
                   std::shared_ptr<const Bf16Buffer> a, std::shared_ptr<const Bf16Buffer> b);
  /// A buffer the deferred work may keep: `buffer` itself when it is consumed here (moved), else a device copy.
  [[nodiscard]] std::shared_ptr<const Bf16Buffer> keep(Bf16Buffer&& buffer) const;
  [[nodiscard]] std::shared_ptr<const Bf16Buffer> keep_copy(const Bf16Buffer& buffer) const;
  /// dx (rows, in) (fp32) = dy W^T, accumulated when beta = 1.
  void linear_dgrad(const Bf16Buffer& dy, int w, std::int64_t rows, F32Buffer& dx, float beta);
  void norm_forward(const NormIdx& idx, const Bf16Buffer& x, Bf16Buffer& y, F32Buffer& mean, F32Buffer& rstd);
  /// dx += norm backward of dy (fp32).
  void norm_backward(const NormIdx& idx, const F32Buffer& dy, const Bf16Buffer& x, const F32Buffer& mean,
                     const F32Buffer& rstd, Bf16Buffer& dx);
  void tp_all_reduce(F32Buffer& data, ReduceOp op = ReduceOp::Sum);
  /// Megatron's g operator before a column-parallel GEMM: under sequence parallelism the all-gather of `local` into
  /// `storage` (returned), else `local` itself.
  [[nodiscard]] const Bf16Buffer& enter_tp(const Bf16Buffer& local, Bf16Buffer& storage);
  /// Its conjugate on fp32 partial sums of every token: reduce-scatter to this rank's rows under sequence
  /// parallelism, else the TP all-reduce; `out` receives the result (`partial` is consumed).
  void leave_tp(F32Buffer& partial, F32Buffer& out);
  void to_bf16(const F32Buffer& in, Bf16Buffer& out);
  [[nodiscard]] bool use_tensor_core_attention() const;

  model::ModelSpec spec_;
  model::Plan plan_;
  int tp_rank_;
  CudaContext context_;
  GptModel layout_; // parameter declarations only (materialize = false)
  DeviceParamLayout device_;
  std::vector<BucketRange> buckets_;
  OptimizerShards shards_;
  F32Buffer master_, grads_, m_, v_;
  bool shard_grads_ = false;
  mutable std::vector<F32Buffer> bucket_grads_; // ZeRO-2: per bucket, live between its first gradient and a scatter
  std::vector<int> param_bucket_;               // ZeRO-2: the bucket holding each parameter
  F32Buffer shard_grad_buffer_;
  bool shard_params_ = false;
  DeviceBuffer<__nv_bfloat16> bf16_shard_;                  // ZeRO-3: this rank's pieces of the bf16 copy
  std::vector<DeviceBuffer<__nv_bfloat16>> bucket_weights_; // ZeRO-3: per bucket, whole while gathered
  std::vector<int> gathers_;                                // ZeRO-3: per bucket, gathers not yet released
  [[nodiscard]] std::vector<std::size_t> buckets_of(const std::vector<int>& params) const;
  F32Buffer replica32_;                      // sharded: the 1-row parameters (norms, biases), widened from bf16
  std::vector<std::size_t> replica_offsets_; // per parameter into replica32_; NOT_REPLICATED for the matrices
  static constexpr std::size_t NOT_REPLICATED = static_cast<std::size_t>(-1);
  DeviceBuffer<__nv_bfloat16> weights_;
  int wte_ = -1, wpe_ = -1, head_w_ = -1;
  NormIdx final_norm_;
  std::vector<LayerIdx> layers_; // by global layer; entries of other stages stay -1
};

} // namespace cuboid::exec::cuda
