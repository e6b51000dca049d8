// CostModel, compute part: GEMM efficiency from shape (analytic curve or measured table) and the attention core
// (fused FlashAttention-style, or the unfused pre-2022 Megatron path). See cost_model.hpp; sources cited inline.
#include "model/cost_model.hpp"

#include "model/errors.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>
#include <vector>

namespace cuboid::model {

namespace {

// Output tiles cuBLAS / CUTLASS pick for large BF16/FP8 GEMMs on sm80/sm90 (NVIDIA "Matrix Multiplication
// Background User's Guide", sections on tile and wave quantisation; CUTLASS default threadblock shapes).
constexpr std::array<std::pair<double, double>, 3> GEMM_TILES = {{{128.0, 256.0}, {256.0, 128.0}, {128.0, 128.0}}};
constexpr int GEMM_TABLE_NEIGHBOURS = 4;

} // namespace

// ---- GEMM efficiency.
// eff(M,N,K) = max_eff * F / (F + F_half) * q(M,N)
//   max_eff: best-shape achievable fraction (MAMF, Bekman), F = 2*M*N*K*batch the kernel's FLOPs;
//   F / (F + F_half) is Hockney's half-performance model (r = r_inf * n / (n + n_1/2); Hockney & Jesshope,
//   "Parallel Computers 2", 1988): a fixed per-call cost makes small GEMMs slow; F_half scales with the rate, so
//   FP8 uses F_half * (FP8 rate / BF16 rate);
//   q = tile x wave quantisation (NVIDIA Matrix Multiplication Background guide): useful work / work of the launched
//   waves, best of the candidate tiles. It is applied only beyond one full wave: cuBLAS fills the GPU for smaller
//   problems with split-K and small tiles, whose cost the Hockney term already carries.
double CostModel::analytic_gemm_efficiency(double m, double n, double k, double batch, bool fp8) const {
  const double max_eff = fp8 ? profile_.gemm_fp8_max_efficiency : profile_.gemm_max_efficiency;
  const double flops = 2.0 * m * n * k * batch;
  double half_flops = profile_.gemm_half_efficiency_flops;
  if (fp8 && profile_.gemm_max_efficiency > 0.0) {
    half_flops *= (peak_flops_per_s_ * profile_.gemm_fp8_max_efficiency) /
                  (bf16_flops_per_s_ * profile_.gemm_max_efficiency);
  }
  const double size_factor = flops / (flops + half_flops);
  double quantisation = 1.0;
  if (profile_.num_sms > 0.0) {
    double best = 0.0;
    for (const auto& [tile_m, tile_n] : GEMM_TILES) {
      const double tiles = std::ceil(m / tile_m) * std::ceil(n / tile_n) * batch;
      if (tiles <= profile_.num_sms) {
        best = 1.0;
        break;
      }
      const double waves = std::ceil(tiles / profile_.num_sms);
      best = std::max(best, (m * n * batch) / (waves * profile_.num_sms * tile_m * tile_n));
    }
    quantisation = best;
  }
  return max_eff * size_factor * quantisation;
}

// Measured table (cuboid calibrate, BF16): inverse-squared-distance average of the nearest points in
// (log M, log N, log K); an exact hit returns its value. FP8 scales by the FP8 / BF16 max-efficiency ratio.
double CostModel::table_gemm_efficiency(double m, double n, double k, bool fp8) const {
  std::vector<std::pair<double, double>> by_distance; // (squared log distance, efficiency)
  by_distance.reserve(profile_.gemm_table.size());
  for (const auto& point : profile_.gemm_table) {
    const double dm = std::log(m / point.m);
    const double dn = std::log(n / point.n);
    const double dk = std::log(k / point.k);
    by_distance.emplace_back(dm * dm + dn * dn + dk * dk, point.efficiency);
  }
  const auto count = std::min<std::size_t>(GEMM_TABLE_NEIGHBOURS, by_distance.size());
  std::partial_sort(by_distance.begin(), by_distance.begin() + static_cast<std::ptrdiff_t>(count), by_distance.end());
  double weighted = 0.0;
  double weights = 0.0;
  for (std::size_t idx = 0; idx < count; ++idx) {
    if (by_distance[idx].first < 1e-12) {
      weighted = by_distance[idx].second;
      weights = 1.0;
      break;
    }
    weighted += by_distance[idx].second / by_distance[idx].first;
    weights += 1.0 / by_distance[idx].first;
  }
  const double eff = weighted / weights;
  const double scale = fp8 && profile_.gemm_max_efficiency > 0.0
                           ? profile_.gemm_fp8_max_efficiency / profile_.gemm_max_efficiency
                           : 1.0;
  return std::min(1.0, eff * scale);
}

double CostModel::gemm_efficiency(double m, double n, double k, double batch, bool fp8) const {
  CUBOID_ASSERT(m > 0.0 && n > 0.0 && k > 0.0 && batch > 0.0, "GEMM shape {}x{}x{} (batch {})", m, n, k, batch);
  if (!profile_.gemm_table.empty()) {
    return table_gemm_efficiency(m, n, k, fp8);
  }
  return analytic_gemm_efficiency(m, n, k, batch, fp8);
}


// ---- attention core
namespace {

// FlashAttention's FLOP convention (Dao-AILab/flash-attention benchmarks/benchmark_flash_attention.py): causal
// attention does half of the s x s work and the backward counts 2.5x the forward. The profile's attention
// efficiencies are in that convention; Op::flops counts the full s x s (Megatron) with backward = 2x forward.
// All modelled models are causal decoders (ModelSpec).
constexpr double CAUSAL_WORK_FRACTION = 0.5;
constexpr double FLASH_BWD_PER_NOMINAL = 2.5 / 2.0;

// Unfused attention (Megatron-LM before FlashAttention, megatron/model/transformer.py CoreAttention): baddbmm QK^T
// writes the scores (2 B), FusedScaleMaskSoftmax reads and writes them (4 B), dropout reads them and writes the
// probabilities and a 1-byte mask (5 B), bmm(P, V) reads the probabilities (2 B). Backward: dP = dO V^T writes
// (2 B), dV = P^T dO reads P (2 B), dropout backward (5 B), softmax backward reads grad and P, writes dS (6 B),
// dQ and dK read dS (4 B). Full s x s, no causal skipping.
constexpr double SOFTMAX_BYTES_PER_SCORE = 4.0;
constexpr double DROPOUT_BYTES_PER_SCORE = 5.0;
constexpr double SOFTMAX_BWD_BYTES_PER_SCORE = 6.0;
constexpr double SCORE_BYTES = 2.0; // a 16-bit score or probability written or read by a batched GEMM

} // namespace

double CostModel::attention_time_s(const Op& op, Phase phase) const {
  // --- CPU prediction across models (branch cpux) --- RoPE on the CPU backend rotates Q and K next to this op
  // (forward before it, backward after it); only a CPU profile prices it (0 elsewhere, and 0 without RoPE).
  const double rope_s = op.rope_elements * profile_.cpu_rope_s_per_element;
  return rope_s + attention_core_time_s(op, phase);
}

double CostModel::attention_core_time_s(const Op& op, Phase phase) const {
  const bool backward = phase == Phase::Backward;
  const double hbm_bw = cluster_.gpu.hbm_bw_bytes_per_s * profile_.hbm_efficiency;
  const double launch = profile_.launch_overhead_s;
  if (plan_.flash_attention || op.m <= 0 || op.k <= 0) {
    // Fused attention stays 16-bit even in FP8 plans (Transformer Engine's default FP8 recipe).
    const double work = op.flops * CAUSAL_WORK_FRACTION * (backward ? FLASH_BWD_PER_NOMINAL : 1.0);
    const double eff = backward ? profile_.attention_bwd_efficiency : profile_.attention_efficiency;
    return std::max(work / (bf16_flops_per_s_ * eff), op.hbm_bytes / hbm_bw) + launch;
  }
  // Queries (m) x keys (n): s x s, or a context-parallel tile of them (p2p: s/cp x s/cp; allgather: s/2cp x s).
  const double queries = static_cast<double>(op.m);
  const double keys = static_cast<double>(op.n > 0 ? op.n : op.m);
  const double head_dim = static_cast<double>(op.k);
  const double batch = static_cast<double>(std::max<std::int64_t>(1, op.batch));
  const double scores = batch * queries * keys;
  const double gemm_flops = 2.0 * queries * keys * head_dim * batch; // one of QK^T, AV, dP, dV, dQ, dK
  // A batched GEMM kernel: the slower of its tensor-core time and its score traffic.
  auto gemm_kernel = [&](double m, double n, double k) {
    const double eff = gemm_efficiency(m, n, k, batch, false);
    return std::max(gemm_flops / (bf16_flops_per_s_ * eff), SCORE_BYTES * scores / hbm_bw) + launch;
  };
  if (!backward) { // QK^T (queries x keys), AV (queries x head_dim over keys)
    return gemm_kernel(queries, keys, head_dim) + gemm_kernel(queries, head_dim, keys) +
           (SOFTMAX_BYTES_PER_SCORE + DROPOUT_BYTES_PER_SCORE) * scores / hbm_bw + 2.0 * launch;
  }
  // dP = dO V^T (queries x keys), dV = P^T dO (keys x head_dim), dQ = dS K (queries x head_dim), dK = dS^T Q.
  return gemm_kernel(queries, keys, head_dim) + gemm_kernel(keys, head_dim, queries) +
         gemm_kernel(queries, head_dim, keys) + gemm_kernel(keys, head_dim, queries) +
         (DROPOUT_BYTES_PER_SCORE + SOFTMAX_BWD_BYTES_PER_SCORE) * scores / hbm_bw + 2.0 * launch;
}

} // namespace cuboid::model
