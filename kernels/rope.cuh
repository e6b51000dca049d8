// Rotary position embedding (Su et al. 2021, RoFormer; "rotate half" layout of GPT-NeoX / Llama) in place, forward
// and backward; reference: exec/cpu/rope.hpp. x: (T*B, heads*D) row-major in T (float or bf16), rows in Megatron's
// [s, b] order (position t = (first_row + row) / B); in every head, dimension i < D/2 is paired with i + D/2 and the
// pair is rotated by t * theta^(-2i/D) (theta = 10000); backward rotates by the opposite angle. One thread per pair,
// fp32 math.
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::rope {

struct Config {
  static constexpr int THREADS = 256;
  static constexpr int MAX_BLOCKS = 65536;
  static constexpr float THETA = 10000.0f; // = exec::cpu::ROPE_THETA
};

template <typename T> struct Args {
  T* x = nullptr;           // (rows, heads * head_dim), rotated in place
  std::int64_t rows = 0;    // T * B
  std::int64_t heads = 0;
  std::int64_t head_dim = 0; // D, even
  std::int64_t batch = 0;   // B
  std::int64_t first_row = 0; // row r is at position (first_row + r) / B (context parallelism's chunks)
  [[nodiscard]] std::int64_t pairs() const { return rows * heads * (head_dim / 2); }
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(pairs(), Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(x, "rope::rotate", "x");
    require(rows > 0, "rope::rotate", "rows must be positive", rows);
    require(heads > 0, "rope::rotate", "heads must be positive", heads);
    require(head_dim > 0 && head_dim % 2 == 0, "rope::rotate", "head_dim must be positive and even", head_dim);
    require(batch > 0, "rope::rotate", "batch must be positive", batch);
    require(first_row >= 0, "rope::rotate", "first_row must be >= 0", first_row);
  }
};

template <typename T> void forward(const Args<T>& args, cudaStream_t stream);
template <typename T> void backward(const Args<T>& args, cudaStream_t stream);

} // namespace cuboid::kernels::rope
