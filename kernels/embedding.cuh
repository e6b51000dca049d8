// Vocab-parallel token embedding and learned position embedding, forward and backward; reference:
// exec/cpu/embedding.hpp (same semantics, same row-major layouts, rows in Megatron's [s, b] order: row = t * B + b).
// Each TP rank holds rows [vocab_start, vocab_start + Vl) of the (V, C) table; tokens outside give zero rows.
// Element type T is float or bf16; the forward's tables may be bf16 under fp32 rows (W: the distributed optimizer's
// forward reads the bf16 model copy, its fp32 master being sharded); gradients are fp32 and accumulated with
// atomicAdd (order of the additions is not deterministic, so dtable differs from the CPU reference by rounding only).
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::embedding {

struct Config {
  static constexpr int THREADS = 256; // one block per row, threads stride over the C columns
};

constexpr std::int64_t MAX_GRID_X = 2147483647; // cudaDeviceProp::maxGridSize[0] on every GPU since sm_30

/// out (N, C) overwritten: out[r] = table[tokens[r] - vocab_start] if that is in [0, Vl), else 0.
template <typename T, typename W = T> struct ForwardArgs {
  T* out = nullptr;                     // (N, C)
  const std::int32_t* tokens = nullptr; // (N)
  const W* table = nullptr;             // (Vl, C)
  std::int64_t rows = 0;                // N
  std::int64_t vocab_rows = 0;          // Vl
  std::int64_t cols = 0;                // C
  std::int64_t vocab_start = 0;
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(out, "embedding::forward", "out");
    require_ptr(tokens, "embedding::forward", "tokens");
    require_ptr(table, "embedding::forward", "table");
    require(rows > 0 && rows <= MAX_GRID_X, "embedding::forward", "rows must be in [1, 2^31)", rows);
    require(vocab_rows > 0, "embedding::forward", "vocab_rows must be positive", vocab_rows);
    require(cols > 0, "embedding::forward", "cols must be positive", cols);
    require(vocab_start >= 0, "embedding::forward", "vocab_start must be >= 0", vocab_start);
  }
};

/// dtable (Vl, C) += dout[r] at row tokens[r] - vocab_start for the in-range tokens.
template <typename T> struct BackwardArgs {
  float* dtable = nullptr;              // (Vl, C), accumulated
  const std::int32_t* tokens = nullptr; // (N)
  const T* dout = nullptr;              // (N, C)
  std::int64_t rows = 0;
  std::int64_t vocab_rows = 0;
  std::int64_t cols = 0;
  std::int64_t vocab_start = 0;
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(dtable, "embedding::backward", "dtable");
    require_ptr(tokens, "embedding::backward", "tokens");
    require_ptr(dout, "embedding::backward", "dout");
    require(rows > 0 && rows <= MAX_GRID_X, "embedding::backward", "rows must be in [1, 2^31)", rows);
    require(vocab_rows > 0, "embedding::backward", "vocab_rows must be positive", vocab_rows);
    require(cols > 0, "embedding::backward", "cols must be positive", cols);
    require(vocab_start >= 0, "embedding::backward", "vocab_start must be >= 0", vocab_start);
  }
};

/// x (n, C) += pos[(first_row + r) / batch] (positions of local rows r; sequence parallelism starts at first_row).
template <typename T, typename W = T> struct PositionForwardArgs {
  T* x = nullptr;          // (n, C)
  const W* pos = nullptr;  // (T, C)
  std::int64_t rows = 0;   // n
  std::int64_t cols = 0;   // C
  std::int64_t positions = 0; // rows of pos (T)
  std::int64_t first_row = 0;
  std::int64_t batch = 0;  // B
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(x, "embedding::position_forward", "x");
    require_ptr(pos, "embedding::position_forward", "pos");
    require(rows > 0 && rows <= MAX_GRID_X, "embedding::position_forward", "rows must be in [1, 2^31)", rows);
    require(cols > 0, "embedding::position_forward", "cols must be positive", cols);
    require(batch > 0, "embedding::position_forward", "batch must be positive", batch);
    require(first_row >= 0, "embedding::position_forward", "first_row must be >= 0", first_row);
    require((first_row + rows - 1) / batch < positions, "embedding::position_forward",
            "last row's position must be < positions", (first_row + rows - 1) / batch);
  }
};

/// dpos (T, C) += dx[r] at position (first_row + r) / batch.
template <typename T> struct PositionBackwardArgs {
  float* dpos = nullptr;  // (T, C), accumulated
  const T* dx = nullptr;  // (n, C)
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t positions = 0;
  std::int64_t first_row = 0;
  std::int64_t batch = 0;
  [[nodiscard]] dim3 grid() const { return dim3(static_cast<unsigned>(rows)); }
  void validate() const {
    require_ptr(dpos, "embedding::position_backward", "dpos");
    require_ptr(dx, "embedding::position_backward", "dx");
    require(rows > 0 && rows <= MAX_GRID_X, "embedding::position_backward", "rows must be in [1, 2^31)", rows);
    require(cols > 0, "embedding::position_backward", "cols must be positive", cols);
    require(batch > 0, "embedding::position_backward", "batch must be positive", batch);
    require(first_row >= 0, "embedding::position_backward", "first_row must be >= 0", first_row);
    require((first_row + rows - 1) / batch < positions, "embedding::position_backward",
            "last row's position must be < positions", (first_row + rows - 1) / batch);
  }
};

/// Instantiated for (T, W) = (float, float), (bf16, bf16), (float, bf16).
template <typename T, typename W = T> void forward(const ForwardArgs<T, W>& args, cudaStream_t stream);
template <typename T> void backward(const BackwardArgs<T>& args, cudaStream_t stream);
template <typename T, typename W = T>
void position_forward(const PositionForwardArgs<T, W>& args, cudaStream_t stream);
template <typename T> void position_backward(const PositionBackwardArgs<T>& args, cudaStream_t stream);

} // namespace cuboid::kernels::embedding
