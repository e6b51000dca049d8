// Fused causal self-attention (softmax(Q K^T / sqrt(D)) V) forward and backward, flash-attention style (Dao et al.
// 2022, algorithms 1 and 2): the (T, T) score matrix is never stored; the forward keeps a running max and sum per
// query row and saves only the log-sum-exp (LSE) per row; the backward recomputes the probabilities from Q, K and
// the LSE. Reference: exec/cpu/attention.hpp (same layouts, grouped-query attention, outputs overwritten).
// Layouts: rows in Megatron's [s, b] order (row = t * B + b); q, out, dq: (T*B, Hq*D); k, v, dk, dv: (T*B, Hkv*D),
// head h at columns h*D .. h*D+D-1; query head h uses KV head h / (Hq / Hkv). lse: (B, Hq, T) fp32.
// Precision: inputs T (bf16 or float), every dot product, softmax and accumulator in fp32.
// Tiling: a block of 4 warps owns 16 query rows (4 per warp) and streams 32-key tiles of K and V through shared
// memory; inside a warp, lane j scores key j of the tile and the probabilities are broadcast by shuffles for the
// P V product. Correctness first: the products are scalar FMAs (no tensor cores), so this is far from the H100
// tensor-core peak; cuDNN fused attention or a WGMMA kernel is the way to reach it (not done, see BENCHMARKS.md).
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::attention {

struct Config {
  static constexpr int WARPS = 4;
  static constexpr int THREADS = WARPS * 32;
  static constexpr int QUERY_ROWS_PER_WARP = 4;
  static constexpr int QUERY_TILE = WARPS * QUERY_ROWS_PER_WARP; // query rows per block (forward, dq)
  static constexpr int KEY_TILE = 32;                            // keys per shared-memory tile (= warp size)
  static constexpr int KEY_ROWS_PER_WARP = 2;
  static constexpr int KEY_BLOCK = WARPS * KEY_ROWS_PER_WARP; // key rows per block (dk, dv)
  static constexpr int MAX_HEAD_DIM = 128;                    // 4 accumulator registers per lane
  static constexpr std::int64_t MAX_GRID_Y = 65535;
};

struct Shape {
  std::int64_t seq = 0;      // T
  std::int64_t batch = 0;    // B
  std::int64_t q_heads = 0;  // Hq, heads of this rank
  std::int64_t kv_heads = 0; // Hkv, divides Hq
  std::int64_t head_dim = 0; // D
  /// Context parallelism: the seq queries sit at positions q_offset .. q_offset + seq - 1 of a key sequence of
  /// kv_seq() = q_offset + seq rows (causal mask aligned to the bottom right, as FlashAttention's); 0 otherwise.
  std::int64_t q_offset = 0;
  [[nodiscard]] std::int64_t kv_seq() const { return q_offset + seq; }
  void validate(const char* kernel) const {
    require(seq > 0 && seq <= 2147483647, kernel, "seq must be in [1, 2^31)", seq);
    require(q_offset >= 0 && kv_seq() <= 2147483647, kernel, "q_offset must be >= 0 and q_offset + seq < 2^31",
            q_offset);
    require(batch > 0, kernel, "batch must be positive", batch);
    require(q_heads > 0, kernel, "q_heads must be positive", q_heads);
    require(kv_heads > 0 && q_heads % kv_heads == 0, kernel, "kv_heads must be positive and divide q_heads",
            kv_heads);
    require(head_dim > 0 && head_dim <= Config::MAX_HEAD_DIM, kernel, "head_dim must be in [1, 128]", head_dim);
    require(batch * q_heads <= Config::MAX_GRID_Y, kernel, "batch * q_heads must be <= 65535", batch * q_heads);
  }
};

/// Grid of the forward and dq kernels: (query tiles, B * Hq).
inline dim3 query_grid(const Shape& s) {
  return dim3(static_cast<unsigned>(ceil_div(s.seq, Config::QUERY_TILE)), static_cast<unsigned>(s.batch * s.q_heads));
}
/// Grid of the dk/dv kernel: (key blocks, B * Hkv).
inline dim3 key_grid(const Shape& s) {
  return dim3(static_cast<unsigned>(ceil_div(s.kv_seq(), Config::KEY_BLOCK)),
              static_cast<unsigned>(s.batch * s.kv_heads));
}
/// Dynamic shared memory (bytes) of each kernel: two padded (KEY_TILE, D+1) tiles plus the block's own rows.
inline std::size_t forward_smem_bytes(const Shape& s) {
  return sizeof(float) * static_cast<std::size_t>(2 * Config::KEY_TILE * (s.head_dim + 1) + Config::QUERY_TILE * s.head_dim);
}
inline std::size_t dq_smem_bytes(const Shape& s) {
  return sizeof(float) *
         static_cast<std::size_t>(2 * Config::KEY_TILE * (s.head_dim + 1) + 2 * Config::QUERY_TILE * s.head_dim);
}
inline std::size_t dkdv_smem_bytes(const Shape& s) {
  return sizeof(float) * static_cast<std::size_t>(2 * Config::KEY_TILE * (s.head_dim + 1) +
                                                  2 * Config::KEY_BLOCK * s.head_dim + 2 * Config::KEY_TILE);
}
/// Workspace of backward: delta = rowsum(dout o out), (B, Hq, T) fp32.
inline std::size_t backward_workspace_bytes(const Shape& s) {
  return sizeof(float) * static_cast<std::size_t>(s.batch * s.q_heads * s.seq);
}

// T below is shape.seq (query rows); k, v, dk and dv have shape.kv_seq() rows (= T unless q_offset > 0).
template <typename T> struct ForwardArgs {
  T* out = nullptr;     // (T*B, Hq*D)
  float* lse = nullptr; // (B, Hq, T)
  const T* q = nullptr; // (T*B, Hq*D)
  const T* k = nullptr; // (kv_seq*B, Hkv*D)
  const T* v = nullptr; // (kv_seq*B, Hkv*D)
  Shape shape;
  [[nodiscard]] dim3 grid() const { return query_grid(shape); }
  void validate() const {
    require_ptr(out, "attention::forward", "out");
    require_ptr(lse, "attention::forward", "lse");
    require_ptr(q, "attention::forward", "q");
    require_ptr(k, "attention::forward", "k");
    require_ptr(v, "attention::forward", "v");
    shape.validate("attention::forward");
  }
};

template <typename T> struct BackwardArgs {
  T* dq = nullptr;          // (T*B, Hq*D), overwritten
  T* dk = nullptr;          // (kv_seq*B, Hkv*D), overwritten (added to with accumulate)
  T* dv = nullptr;          // (kv_seq*B, Hkv*D), overwritten (added to with accumulate)
  float* workspace = nullptr; // backward_workspace_bytes(shape)
  const T* dout = nullptr;  // (T*B, Hq*D)
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const T* out = nullptr;   // forward output
  const float* lse = nullptr; // forward LSE
  Shape shape;
  /// dk and dv += this call's gradients (context parallelism: one call per query chunk against the same keys).
  bool accumulate = false;
  void validate() const {
    require_ptr(dq, "attention::backward", "dq");
    require_ptr(dk, "attention::backward", "dk");
    require_ptr(dv, "attention::backward", "dv");
    require_ptr(workspace, "attention::backward", "workspace");
    require_ptr(dout, "attention::backward", "dout");
    require_ptr(q, "attention::backward", "q");
    require_ptr(k, "attention::backward", "k");
    require_ptr(v, "attention::backward", "v");
    require_ptr(out, "attention::backward", "out");
    require_ptr(lse, "attention::backward", "lse");
    shape.validate("attention::backward");
  }
};

template <typename T> void forward(const ForwardArgs<T>& args, cudaStream_t stream);
/// Three kernels on `stream`: delta = rowsum(dout o out), then dk/dv (per key block, over the query heads of its KV
/// group), then dq. No atomics: every output element is written by exactly one thread.
template <typename T> void backward(const BackwardArgs<T>& args, cudaStream_t stream);

} // namespace cuboid::kernels::attention
