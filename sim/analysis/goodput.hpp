// Goodput of a long training job under random failures: the checkpoint interval that minimises lost work (Young
// 1974; Daly 2006) and the expected wall-clock time including checkpoint writes, lost work and restarts. Used by
// `cuboid report` (report.hpp) to turn "time to train on a perfect machine" into "time to train on a real one".
#pragma once

namespace cuboid::sim::analysis {

/// Failure and recovery assumptions of one job. Times in seconds, MTBF in hours per GPU (a job on n GPUs fails
/// n times as often: failures of independent GPUs are a Poisson process whose rates add).
struct FailureAssumptions {
  double mtbf_gpu_hours = 50'000.0; // per-GPU mean time between job-interrupting failures
  double checkpoint_write_s = 60.0; // delta: time the job is stalled writing one checkpoint
  double restart_s = 600.0;         // R: detect the failure, reschedule, reload the last checkpoint, warm up
};

/// What failures cost a job of `num_gpus` GPUs (all times in seconds).
struct Goodput {
  double job_mtbf_s = 0.0;              // M = mtbf_gpu_hours * 3600 / num_gpus
  double checkpoint_interval_s = 0.0;   // tau: compute time between two checkpoints
  double checkpoint_write_s = 0.0;      // delta
  double restart_s = 0.0;               // R
  double lost_work_per_failure_s = 0.0; // first-order: tau / 2 of recomputation + R
  double goodput_fraction = 1.0;        // useful compute time / expected wall time, in (0, 1]
};

/// Daly's first-order optimum checkpoint interval (J. T. Daly, "A higher order estimate of the optimum checkpoint
/// interval for restart dumps", Future Generation Computer Systems 22(3):303-312, 2006, doi:10.1016/j.future.2004.11.016):
/// tau = sqrt(2 delta M) - delta, which refines Young's tau = sqrt(2 delta M) (J. W. Young, "A first order
/// approximation to the optimum checkpoint interval", CACM 17(9):530-531, 1974). Outside the formula's range
/// (delta >= M / 2, where it no longer gives tau >= delta) the interval is M, as Daly does for large delta.
/// Preconditions: delta > 0, M > 0.
double optimal_checkpoint_interval_s(double checkpoint_write_s, double mtbf_s);

/// Expected wall-clock time to finish `solve_time_s` of useful compute with checkpoints every `interval_s`, under
/// exponentially distributed failures of mean `mtbf_s` (Daly 2006, the complete cost function):
///   T_wall = M e^(R/M) (e^((tau + delta)/M) - 1) T_solve / tau.
/// It counts checkpoint writes, the work lost since the last checkpoint, restarts, and failures during restarts.
/// Tends to T_solve (1 + delta/tau) when M -> infinity. Preconditions: all times > 0 except solve_time_s >= 0.
double expected_wall_time_s(double solve_time_s, double interval_s, double checkpoint_write_s, double restart_s,
                            double mtbf_s);

/// Goodput of a job on `num_gpus` GPUs at the optimal interval. Throws InputError, naming the flag, if the MTBF or the
/// checkpoint write time is not positive or the restart time is negative (--mtbf-gpu-hours, --checkpoint-write-s,
/// --restart-s).
Goodput compute_goodput(const FailureAssumptions& assumptions, int num_gpus);

} // namespace cuboid::sim::analysis
