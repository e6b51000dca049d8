// Tests for the Young/Daly checkpoint interval and Daly's expected wall time under failures (sim/analysis/goodput.hpp).
#include "sim/analysis/goodput.hpp"

#include "model/errors.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

using namespace cuboid::sim::analysis;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {
constexpr double MINUTE = 60.0;
constexpr double HOUR = 3600.0;

// Interval minimising the complete model's wall time, by a fine scan (the reference for Daly's published optima).
double numerical_optimum_s(double delta, double restart, double mtbf) {
  double best_tau = 0.0;
  double best_wall = std::numeric_limits<double>::infinity();
  for (double tau = delta / 100.0; tau < 4.0 * mtbf; tau *= 1.0005) {
    const double wall = expected_wall_time_s(1.0, tau, delta, restart, mtbf);
    if (wall < best_wall) {
      best_wall = wall;
      best_tau = tau;
    }
  }
  return best_tau;
}
} // namespace

TEST_CASE("sim::analysis::goodput: Daly's first-order interval", "[sim][report]") {
  SECTION("Daly 2006 Fig. 3 system: M = 24 h, delta = 5 min gives sqrt(2 * 5 * 1440) - 5 = 115 min exactly") {
    REQUIRE_THAT(optimal_checkpoint_interval_s(5.0 * MINUTE, 24.0 * HOUR), WithinRel(115.0 * MINUTE, 1e-12));
  }
  SECTION("Young's sqrt(2 delta M) minus delta: delta = 60 s, M = 1e6 s") {
    REQUIRE_THAT(optimal_checkpoint_interval_s(60.0, 1e6), WithinRel(std::sqrt(2.0 * 60.0 * 1e6) - 60.0, 1e-12));
  }
  SECTION("outside the formula's range (delta >= M/2) the interval is M") {
    REQUIRE_THAT(optimal_checkpoint_interval_s(600.0, 1000.0), WithinRel(1000.0, 1e-12));
  }
}

// Daly (2006) Figs. 3-5 report the optimum of the complete model for R = 10 min, delta = 5 min: 117 min at M = 24 h,
// 57 min at M = 6 h, 9.1 min at M = 15 min. Minimising our expected_wall_time_s must land on the same intervals
// (within the 1% his rounding allows), which checks the implementation of the complete model.
TEST_CASE("sim::analysis::goodput: the complete model reproduces Daly's published optima", "[sim][report]") {
  const auto [mtbf, expected] = GENERATE(std::pair{24.0 * HOUR, 117.0 * MINUTE}, std::pair{6.0 * HOUR, 57.0 * MINUTE},
                                         std::pair{15.0 * MINUTE, 9.1 * MINUTE});
  CAPTURE(mtbf);
  REQUIRE_THAT(numerical_optimum_s(5.0 * MINUTE, 10.0 * MINUTE, mtbf), WithinRel(expected, 0.01));
}

TEST_CASE("sim::analysis::goodput: limits and scaling", "[sim][report]") {
  SECTION("no failures (M -> infinity): wall time -> T (1 + delta / tau), goodput -> 1") {
    const double tau = 3600.0;
    REQUIRE_THAT(expected_wall_time_s(1000.0, tau, 60.0, 600.0, 1e15), WithinRel(1000.0 * (1.0 + 60.0 / tau), 1e-9));
    FailureAssumptions assumptions;
    assumptions.mtbf_gpu_hours = 1e12;
    REQUIRE_THAT(compute_goodput(assumptions, 1024).goodput_fraction, WithinAbs(1.0, 1e-5));
  }
  SECTION("first order: for delta, R << M goodput ~ 1 / (1 + delta/tau + (tau/2 + R)/M)") {
    const FailureAssumptions assumptions{1e6 * 1024 / HOUR, 60.0, 600.0}; // M = 1e6 s on 1024 GPUs
    const Goodput g = compute_goodput(assumptions, 1024);
    REQUIRE_THAT(g.job_mtbf_s, WithinRel(1e6, 1e-12));
    const double tau = g.checkpoint_interval_s;
    const double first_order = 1.0 / (1.0 + 60.0 / tau + (tau / 2.0 + 600.0) / 1e6);
    REQUIRE_THAT(g.goodput_fraction, WithinRel(first_order, 1e-3));
    REQUIRE_THAT(g.lost_work_per_failure_s, WithinRel(tau / 2.0 + 600.0, 1e-12));
  }
  SECTION("job MTBF is the per-GPU MTBF over the GPU count; goodput falls as the job grows") {
    const FailureAssumptions assumptions{50'000.0, 60.0, 600.0};
    double previous = 1.0;
    for (const int gpus : {64, 1024, 16384, 131072}) {
      const Goodput g = compute_goodput(assumptions, gpus);
      CAPTURE(gpus);
      REQUIRE_THAT(g.job_mtbf_s, WithinRel(50'000.0 * HOUR / gpus, 1e-12));
      REQUIRE(g.goodput_fraction < previous);
      REQUIRE(g.goodput_fraction > 0.0);
      previous = g.goodput_fraction;
    }
  }
}

TEST_CASE("sim::analysis::goodput: bad assumptions name the flag", "[sim][report]") {
  FailureAssumptions assumptions;
  assumptions.mtbf_gpu_hours = 0.0;
  REQUIRE_THROWS_WITH(compute_goodput(assumptions, 8), Contains("--mtbf-gpu-hours"));
  assumptions = FailureAssumptions{};
  assumptions.checkpoint_write_s = -1.0;
  REQUIRE_THROWS_AS(compute_goodput(assumptions, 8), cuboid::InputError);
  assumptions = FailureAssumptions{};
  assumptions.restart_s = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(compute_goodput(assumptions, 8), Contains("--restart-s"));
}
