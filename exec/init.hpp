// Deterministic parameter initialisation that is independent of the parallel plan: element (i, j) of a full weight
// named `name` is a pure function of (seed, name, i * cols + j) (a counter-based generator, SplitMix64 + Box-Muller),
// so every TP/PP/DP split materialises exactly the values of the single-rank model without generating the full
// tensor.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace cuboid::exec {

/// SplitMix64 finaliser (Steele et al. 2014): a bijective 64-bit mixer used as a counter-based generator.
[[nodiscard]] std::uint64_t mix64(std::uint64_t x);
/// Stable 64-bit hash of a string (FNV-1a then mixed), independent of the standard library.
[[nodiscard]] std::uint64_t hash_name(std::string_view name);
/// Uniform double in [0, 1) from a counter.
[[nodiscard]] double uniform01(std::uint64_t key, std::uint64_t counter);
/// Standard normal from a counter (Box-Muller on two uniforms).
[[nodiscard]] double standard_normal(std::uint64_t key, std::uint64_t counter);

enum class InitKind { Normal, Ones, Zeros };

/// Fills `out` (row-major, rows x cols) with the block [row0, row0+rows) x [col0, col0+cols) of the full
/// (full_rows x full_cols) tensor `name`.
void init_block(std::uint64_t seed, std::string_view name, InitKind kind, double stddev, std::int64_t full_cols,
                std::int64_t row0, std::int64_t rows, std::int64_t col0, std::int64_t cols, std::span<float> out);

} // namespace cuboid::exec
