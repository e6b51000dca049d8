// Vocab-parallel cross-entropy pieces (Megatron _VocabParallelCrossEntropy); reference:
// exec/cpu/cross_entropy.hpp. Logits (N, Vl) are this TP rank's vocabulary shard [vocab_start, vocab_start + Vl).
// The caller runs, on one stream, with NCCL all-reduces over the TP group in between:
//   1. row_max          -> row_max (N);                       all-reduce MAX over TP
//   2. exp_sums         logits := exp(logits - row_max); sums (2N) = [sum of exp | shifted target logit or 0];
//                                                             all-reduce SUM over TP
//   3. loss_normalize   losses (N) = log(sums[r]) - sums[N + r]; logits := logits / sums[r] (the probabilities)
//   backward: dlogits = (probs - onehot(target)) * scale (may run in place: dlogits == probs).
// Logits are T (float or bf16); every sum and the loss are fp32. One block per row.
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::cross_entropy {

struct Config {
  static constexpr int THREADS = 256;
};

constexpr std::int64_t MAX_GRID_X = 2147483647;

inline void validate_rows_cols(const char* kernel, std::int64_t rows, std::int64_t cols) {
  require(rows > 0 && rows <= MAX_GRID_X, kernel, "rows must be in [1, 2^31)", rows);
  require(cols > 0, kernel, "cols (local vocabulary) must be positive", cols);
}

template <typename T> struct RowMaxArgs {
  float* row_max = nullptr;  // (N)
  const T* logits = nullptr; // (N, Vl)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(row_max, "cross_entropy::row_max", "row_max");
    require_ptr(logits, "cross_entropy::row_max", "logits");
    validate_rows_cols("cross_entropy::row_max", rows, cols);
  }
};

template <typename T> struct ExpSumsArgs {
  T* logits = nullptr;                   // (N, Vl), replaced by exp(logits - row_max)
  float* sums = nullptr;                 // (2N)
  const float* row_max = nullptr;        // (N), already reduced over TP
  const std::int32_t* targets = nullptr; // (N)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t vocab_start = 0;
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(logits, "cross_entropy::exp_sums", "logits");
    require_ptr(sums, "cross_entropy::exp_sums", "sums");
    require_ptr(row_max, "cross_entropy::exp_sums", "row_max");
    require_ptr(targets, "cross_entropy::exp_sums", "targets");
    validate_rows_cols("cross_entropy::exp_sums", rows, cols);
    require(vocab_start >= 0, "cross_entropy::exp_sums", "vocab_start must be >= 0", vocab_start);
  }
};

template <typename T> struct LossNormalizeArgs {
  float* losses = nullptr;     // (N)
  T* probs = nullptr;          // (N, Vl): exp values in, probabilities out
  const float* sums = nullptr; // (2N), reduced over TP
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(losses, "cross_entropy::loss_normalize", "losses");
    require_ptr(probs, "cross_entropy::loss_normalize", "probs");
    require_ptr(sums, "cross_entropy::loss_normalize", "sums");
    validate_rows_cols("cross_entropy::loss_normalize", rows, cols);
  }
};

template <typename T> struct BackwardArgs {
  T* dlogits = nullptr;                  // (N, Vl), overwritten; may equal probs
  const T* probs = nullptr;              // (N, Vl)
  const std::int32_t* targets = nullptr; // (N)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t vocab_start = 0;
  float scale = 1.0f;                    // dloss / drow (e.g. 1 / N)
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(dlogits, "cross_entropy::backward", "dlogits");
    require_ptr(probs, "cross_entropy::backward", "probs");
    require_ptr(targets, "cross_entropy::backward", "targets");
    validate_rows_cols("cross_entropy::backward", rows, cols);
    require(vocab_start >= 0, "cross_entropy::backward", "vocab_start must be >= 0", vocab_start);
  }
};

template <typename T> void row_max(const RowMaxArgs<T>& args, cudaStream_t stream);
template <typename T> void exp_sums(const ExpSumsArgs<T>& args, cudaStream_t stream);
template <typename T> void loss_normalize(const LossNormalizeArgs<T>& args, cudaStream_t stream);
template <typename T> void backward(const BackwardArgs<T>& args, cudaStream_t stream);

} // namespace cuboid::kernels::cross_entropy
