// Central finite-difference gradient checks for the CPU ops (fp32 ops, loss accumulated in double).
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <span>
#include <string>

namespace cuboid::exec::test {

/// Compares analytic[i] with (loss(x_i + h) - loss(x_i - h)) / 2h for every entry of `x` (or every `stride`-th).
/// Tolerance: |num - ana| <= abs_tol + rel_tol * max(|num|, |ana|).
inline void check_gradient(const std::string& what, std::span<float> x, std::span<const float> analytic,
                           const std::function<double()>& loss, float h = 1e-2f, double abs_tol = 2e-3,
                           double rel_tol = 2e-2, std::size_t stride = 1) {
  REQUIRE(x.size() == analytic.size());
  for (std::size_t idx = 0; idx < x.size(); idx += stride) {
    const float saved = x[idx];
    x[idx] = saved + h;
    const double plus = loss();
    x[idx] = saved - h;
    const double minus = loss();
    x[idx] = saved;
    const double numeric = (plus - minus) / (2.0 * static_cast<double>(h));
    const double ana = static_cast<double>(analytic[idx]);
    const double tol = abs_tol + rel_tol * std::max(std::abs(numeric), std::abs(ana));
    INFO(what << "[" << idx << "]: analytic " << ana << " numeric " << numeric);
    CHECK(std::abs(numeric - ana) <= tol);
  }
}

} // namespace cuboid::exec::test
