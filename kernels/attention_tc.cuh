// Tensor-core causal flash attention (bf16 WMMA 16x16x16, fp32 accumulate), forward and backward, for the CUDA
// training runtime; same interface, layouts, LSE convention and reference (exec/cpu/attention.hpp) as
// kernels/attention.cuh, whose scalar-FMA kernels remain the fallback for shapes this one does not take.
// Algorithm: Dao 2023 (FlashAttention-2, arXiv:2307.08691) algorithms 1 and 2, with 64-row tiles: a block of
// 4 warps owns 64 query rows (forward, dq) or 64 key rows (dk/dv), each warp 16 of them; tiles of K/V (or Q/dO)
// stream through shared memory; every product (Q K^T, P V, dO V^T, dS K, P^T dO, dS^T Q) is a warp-level WMMA GEMM
// whose operands come from shared-memory tiles and whose fp32 accumulators stay in registers. The forward's softmax
// is scalar on the warp's 16 score rows in shared memory; the backward computes P and dS = P (dP - delta) on the
// accumulator fragments, element by element, through a fragment index (no assumption about which lane holds which
// element) and stores them as bf16 operands.
// The backward is deterministic (no atomics): dk/dv per key block over the query tiles of every query head of its
// KV group, then dq per query block. Requirements (supported()): head_dim a multiple of 16 and <= 128, seq and
// q_offset (context parallelism's query chunks) multiples of 64, batch * q_heads <= 65535; bf16 only; sm_80 or newer
// (bf16 WMMA).
#pragma once

#include "kernels/attention.cuh"

namespace cuboid::kernels::attention_tc {

struct Config {
  static constexpr int WARPS = 4;
  static constexpr int THREADS = WARPS * 32;
  static constexpr int TILE = 64;        // query rows per block = keys per tile (forward, dq); keys per block (dk/dv)
  static constexpr int ROWS_PER_WARP = 16;
  static constexpr int MAX_HEAD_DIM = 128;
  static constexpr int PAD_BF16 = 8;     // row padding of bf16 tiles (16 bytes: WMMA ldm multiple, fewer conflicts)
  static constexpr int PAD_F32 = 4;      // row padding of fp32 tiles
};

/// Empty when the tensor-core kernels take `shape`; else why not.
[[nodiscard]] inline std::string unsupported_reason(const attention::Shape& s) {
  if (s.head_dim % 16 != 0 || s.head_dim > Config::MAX_HEAD_DIM || s.head_dim <= 0) {
    return "head_dim must be a positive multiple of 16 and <= 128 (got " + std::to_string(s.head_dim) + ")";
  }
  if (s.seq % Config::TILE != 0 || s.seq <= 0) {
    return "seq must be a positive multiple of 64 (got " + std::to_string(s.seq) + ")";
  }
  if (s.q_offset % Config::TILE != 0 || s.q_offset < 0) {
    return "q_offset must be a multiple of 64 (got " + std::to_string(s.q_offset) + ")";
  }
  if (s.batch * s.q_heads > attention::Config::MAX_GRID_Y || s.batch <= 0 || s.q_heads <= 0 || s.kv_heads <= 0 ||
      s.q_heads % s.kv_heads != 0) {
    return "batch * q_heads must be <= 65535 and kv_heads must divide q_heads";
  }
  return {};
}
[[nodiscard]] inline bool supported(const attention::Shape& s) { return unsupported_reason(s).empty(); }

/// Dynamic shared memory (bytes) of each kernel for head dimension D. The accumulators (O, dK / dV, dQ) and, in the
/// backward, the scores and dP live in registers; shared memory holds the operand tiles, the bf16 P / dS tiles that
/// feed the next GEMM, the 16 x 16 fragment index tile and per-row statistics.
inline std::size_t bf16_tile_bytes(std::int64_t d) { return 2 * static_cast<std::size_t>(Config::TILE * (d + Config::PAD_BF16)); }
inline std::size_t score_bytes() { return 4 * static_cast<std::size_t>(Config::TILE * (Config::TILE + Config::PAD_F32)); }
inline std::size_t prob_bytes() { return 2 * static_cast<std::size_t>(Config::TILE * (Config::TILE + Config::PAD_BF16)); }
inline constexpr std::size_t INDEX_TILE_BYTES = 16 * 16 * 4;
inline constexpr std::size_t ROW_STAT_BYTES = 4 * Config::TILE; // one float per row of a tile
/// Q, K, V tiles; scores (the softmax's row max and sum are scalar); probabilities; index tile; alpha / l per row.
inline std::size_t forward_smem_bytes(const attention::Shape& s) {
  return 3 * bf16_tile_bytes(s.head_dim) + score_bytes() + prob_bytes() + INDEX_TILE_BYTES + ROW_STAT_BYTES;
}
/// K, V (own), Q, dO tiles; P / dS; index tile; LSE and delta of the Q tile.
inline std::size_t dkdv_smem_bytes(const attention::Shape& s) {
  return 4 * bf16_tile_bytes(s.head_dim) + prob_bytes() + INDEX_TILE_BYTES + 2 * ROW_STAT_BYTES;
}
/// Q, dO (own), K, V tiles; dS; index tile; LSE and delta.
inline std::size_t dq_smem_bytes(const attention::Shape& s) {
  return 4 * bf16_tile_bytes(s.head_dim) + prob_bytes() + INDEX_TILE_BYTES + 2 * ROW_STAT_BYTES;
}

/// Throws LaunchError unless supported(args.shape) (and the pointer checks of attention::ForwardArgs).
void forward(const attention::ForwardArgs<bf16>& args, cudaStream_t stream);
/// Three kernels on `stream`: delta = rowsum(dout o out) into args.workspace, dk/dv, dq.
void backward(const attention::BackwardArgs<bf16>& args, cudaStream_t stream);

} // namespace cuboid::kernels::attention_tc
