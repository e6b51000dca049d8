// Young/Daly checkpoint interval and Daly's expected wall-clock time under Poisson failures (see goodput.hpp).
#include "sim/analysis/goodput.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <cmath>

namespace cuboid::sim::analysis {

namespace {
constexpr double SECONDS_PER_HOUR = 3600.0;

void require_positive(double value, const char* flag, bool allow_zero = false) {
  if (!std::isfinite(value) || value < 0.0 || (value == 0.0 && !allow_zero)) {
    throw InputError(input_message("command line", flag,
                                   fmt::format("{} must be a {} number", value, allow_zero ? "non-negative" : "positive")));
  }
}
} // namespace

double optimal_checkpoint_interval_s(double checkpoint_write_s, double mtbf_s) {
  CUBOID_ASSERT(checkpoint_write_s > 0.0 && mtbf_s > 0.0, "delta {} and M {} must be positive", checkpoint_write_s,
                mtbf_s);
  if (checkpoint_write_s >= mtbf_s / 2.0) {
    return mtbf_s;
  }
  return std::sqrt(2.0 * checkpoint_write_s * mtbf_s) - checkpoint_write_s;
}

double expected_wall_time_s(double solve_time_s, double interval_s, double checkpoint_write_s, double restart_s,
                            double mtbf_s) {
  CUBOID_ASSERT(interval_s > 0.0 && mtbf_s > 0.0 && checkpoint_write_s >= 0.0 && restart_s >= 0.0,
                "tau {} delta {} R {} M {}", interval_s, checkpoint_write_s, restart_s, mtbf_s);
  // Each of the T_s / tau segments (tau of compute, then a checkpoint of delta) is retried until it passes; with
  // exponential failures one segment takes M e^(R/M) (e^((tau+delta)/M) - 1) in expectation (Daly 2006).
  // expm1 keeps the M -> infinity limit (tau + delta) exact instead of cancelling to 0.
  const double per_segment_s =
      mtbf_s * std::exp(restart_s / mtbf_s) * std::expm1((interval_s + checkpoint_write_s) / mtbf_s);
  return per_segment_s * solve_time_s / interval_s;
}

Goodput compute_goodput(const FailureAssumptions& assumptions, int num_gpus) {
  require_positive(assumptions.mtbf_gpu_hours, "--mtbf-gpu-hours");
  require_positive(assumptions.checkpoint_write_s, "--checkpoint-write-s");
  require_positive(assumptions.restart_s, "--restart-s", true);
  CUBOID_ASSERT(num_gpus > 0, "num_gpus {} must be positive", num_gpus);
  Goodput out;
  // Independent GPUs: failure rates add, so the job's MTBF is the per-GPU MTBF divided by the GPU count.
  out.job_mtbf_s = assumptions.mtbf_gpu_hours * SECONDS_PER_HOUR / static_cast<double>(num_gpus);
  out.checkpoint_write_s = assumptions.checkpoint_write_s;
  out.restart_s = assumptions.restart_s;
  out.checkpoint_interval_s = optimal_checkpoint_interval_s(out.checkpoint_write_s, out.job_mtbf_s);
  out.lost_work_per_failure_s = out.checkpoint_interval_s / 2.0 + out.restart_s;
  // Goodput does not depend on the job length: T_wall is proportional to T_solve.
  constexpr double UNIT_SOLVE_S = 1.0;
  out.goodput_fraction = UNIT_SOLVE_S / expected_wall_time_s(UNIT_SOLVE_S, out.checkpoint_interval_s,
                                                             out.checkpoint_write_s, out.restart_s, out.job_mtbf_s);
  return out;
}

} // namespace cuboid::sim::analysis
