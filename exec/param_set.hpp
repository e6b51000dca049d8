// ParamSet: this rank's shard of the model parameters in one flat fp32 buffer, with gradients and AdamW moments in
// parallel flat buffers (so DP buckets and the optimizer work on contiguous ranges). Each entry records how its
// full tensor is split over TP, so shards can be initialised from the full-tensor generator (init.hpp) and gathered
// back into the full model.
#pragma once

#include "exec/init.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cuboid::exec {

/// How a full (rows, cols) tensor is split over the TP group (Megatron).
enum class TpSplit {
  Replicated, // every TP rank holds it all (norms, row-parallel biases, position embeddings)
  Columns,    // column-parallel weights and their biases: TP rank t holds columns [t*cols/tp, (t+1)*cols/tp)
  Rows,       // row-parallel weights and vocab-parallel embeddings: rows [t*rows/tp, (t+1)*rows/tp)
};

struct ParamInfo {
  std::string name;           // canonical full-model name, e.g. "layers.3.attn.wq"
  std::int64_t full_rows = 0;
  std::int64_t full_cols = 0;
  TpSplit split = TpSplit::Replicated;
  InitKind init = InitKind::Normal;
  double init_std = 0.0;
  std::int64_t rows = 0;      // local shard
  std::int64_t cols = 0;
  std::int64_t row0 = 0;      // position of the shard in the full tensor
  std::int64_t col0 = 0;
  std::size_t offset = 0;     // into the flat buffers
  bool weight_decay = false;  // matrices yes; biases and norms no (Megatron)
  bool sequence_parallel_grad = false; // replicated param whose grad is partial per TP rank under SP
  bool embedding_copy = false; // duplicate of the tied word embedding on the last pipeline stage
  bool expert = false;        // --- mixture of experts --- a routed expert's: reduced over the expert-DP group

  [[nodiscard]] std::size_t size() const { return static_cast<std::size_t>(rows * cols); }
  /// Whether tp_rank's copy counts in the global gradient norm: each unique parameter once (TP-replicated ones on
  /// tp_rank 0 only, the tied embedding's last-stage copy never).
  [[nodiscard]] bool counts_in_grad_norm(int tp_rank) const {
    return !embedding_copy && (split != TpSplit::Replicated || tp_rank == 0);
  }
};

class ParamSet {
public:
  ParamSet(int tp_size, int tp_rank) : tp_size_(tp_size), tp_rank_(tp_rank) {}

  /// Adds a parameter (before finalize()); returns its index.
  int add(const std::string& name, std::int64_t full_rows, std::int64_t full_cols, TpSplit split, InitKind init,
          double init_std);
  /// Lays out the flat buffers; with `materialize`, allocates them and initialises every shard from `seed`
  /// (without, only the infos are usable: canonical parameter lists). No add() afterwards.
  void finalize(std::uint64_t seed, bool materialize = true);

  [[nodiscard]] const std::vector<ParamInfo>& infos() const { return infos_; }
  [[nodiscard]] ParamInfo& info(int idx) { return infos_[static_cast<std::size_t>(idx)]; }
  [[nodiscard]] const ParamInfo& info(int idx) const { return infos_[static_cast<std::size_t>(idx)]; }
  [[nodiscard]] float* value(int idx) { return values_.data() + info(idx).offset; }
  [[nodiscard]] const float* value(int idx) const { return values_.data() + info(idx).offset; }
  [[nodiscard]] float* grad(int idx) { return grads_.data() + info(idx).offset; }
  [[nodiscard]] std::span<float> values() { return values_; }
  [[nodiscard]] std::span<float> grads() { return grads_; }
  [[nodiscard]] std::span<float> moment1() { return m_; }
  [[nodiscard]] std::span<float> moment2() { return v_; }
  [[nodiscard]] std::size_t num_elements() const { return values_.size(); }
  /// Index of `name`, or -1.
  [[nodiscard]] int find(const std::string& name) const;
  void zero_grads();
  /// Frees the full AdamW moment buffers (ZeRO-2/3 keep sharded moments in ZeroShards); moment1()/moment2() are
  /// empty afterwards.
  void release_optimizer_state();

private:
  int tp_size_;
  int tp_rank_;
  bool finalized_ = false;
  std::vector<ParamInfo> infos_;
  std::vector<float> values_;
  std::vector<float> grads_;
  std::vector<float> m_;
  std::vector<float> v_;
};

} // namespace cuboid::exec
