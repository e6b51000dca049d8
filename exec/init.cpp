// Counter-based initialisation: no generator state, so any shard of any tensor is generated independently.
#include "exec/init.hpp"

#include "model/errors.hpp"

#include <cmath>
#include <numbers>

namespace cuboid::exec {

std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27U)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31U);
}

std::uint64_t hash_name(std::string_view name) {
  constexpr std::uint64_t FNV_OFFSET = 0xCBF29CE484222325ULL;
  constexpr std::uint64_t FNV_PRIME = 0x100000001B3ULL;
  std::uint64_t h = FNV_OFFSET;
  for (const char c : name) {
    h = (h ^ static_cast<std::uint8_t>(c)) * FNV_PRIME;
  }
  return mix64(h);
}

double uniform01(std::uint64_t key, std::uint64_t counter) {
  constexpr double TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0;
  return static_cast<double>(mix64(key ^ mix64(counter)) >> 11U) * TWO_POW_MINUS_53;
}

double standard_normal(std::uint64_t key, std::uint64_t counter) {
  const double u1 = 1.0 - uniform01(key, 2 * counter);   // (0, 1]: log is finite
  const double u2 = uniform01(key, 2 * counter + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

void init_block(std::uint64_t seed, std::string_view name, InitKind kind, double stddev, std::int64_t full_cols,
                std::int64_t row0, std::int64_t rows, std::int64_t col0, std::int64_t cols, std::span<float> out) {
  CUBOID_ASSERT(static_cast<std::int64_t>(out.size()) == rows * cols, "init_block {}: {} != {} x {}", name, out.size(),
                rows, cols);
  const std::uint64_t key = mix64(seed) ^ hash_name(name);
  for (std::int64_t row = 0; row < rows; ++row) {
    for (std::int64_t col = 0; col < cols; ++col) {
      const auto idx = static_cast<std::size_t>(row * cols + col);
      switch (kind) {
      case InitKind::Ones: out[idx] = 1.0f; break;
      case InitKind::Zeros: out[idx] = 0.0f; break;
      case InitKind::Normal: {
        const auto counter = static_cast<std::uint64_t>((row0 + row) * full_cols + col0 + col);
        out[idx] = static_cast<float>(stddev * standard_normal(key, counter));
        break;
      }
      }
    }
  }
}

} // namespace cuboid::exec
