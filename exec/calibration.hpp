// CPU calibration microbenchmarks: time the GEMM shapes a model and plan actually run (forward, data-gradient and
// weight-gradient GEMMs of every linear layer and the output layer, raw Eigen and through the CPU backend's linear
// op), causal attention forward and backward, whole units of the model (embedding, layer, head, optimizer) to price
// the memory-bound rest, and all-reduce by message size over a communicator, then express them as a
// model::CostProfile (fractions of the given peaks, an alpha-beta fit for collectives) that `cuboid calibrate` saves
// with model::save_profile.
#pragma once

#include "exec/communicator.hpp"
#include "model/cost_profile.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

#include <string>
#include <vector>

namespace cuboid::exec {

struct CalibrationOptions {
  /// Dense peak of one rank (FLOP/s), memory bandwidth (bytes/s) and link bandwidth per rank per direction
  /// (bytes/s) the efficiencies are relative to. 0 = unknown: the best measured value is used as the peak, so the
  /// best efficiency is 1 (recorded in the profile's assumptions).
  double peak_flops_per_s = 0.0;
  double mem_bw_bytes_per_s = 0.0;
  double link_bw_bytes_per_s = 0.0;
  double min_time_s = 0.02;         // repeat each measurement for at least this long; the best repeat counts
  std::vector<double> allreduce_bytes = {4096, 65536, 1 << 20, 4 << 20, 16 << 20};
  std::string name = "cpu-measured";
  /// TP sizes whose per-rank shapes are measured (empty: plan.tp only); the GEMM table covers them all.
  std::vector<int> tp_sizes;
  // --- in-situ units (issue 5) ---
  /// > 0: the TP-1 units (embedding, layer, head, optimizer) are not timed alone but inside this many real training
  /// steps of the runtime (exec::Trainer, data parallel over all ranks of `world`, 1F1B, per-task timing), the first
  /// step left out; each unit's time is the mean over its tasks (a step is a sum of tasks, so the mean is what it
  /// adds up; a median would drop the slow tail that the step pays). 0: every unit is timed alone (best repeat).
  int in_situ_steps = 0;
  int in_situ_microbatches = 4; // micro-batches per rank and step of the in-situ run
  bool in_situ_cpu_time = true; // true: each task's thread CPU time (robust to other processes); false: wall time
};

struct GemmMeasurement {
  std::string label;      // "qkv.fwd", "fc2.wgrad", ...
  int tp = 1;             // TP size whose per-rank shape this is
  double m = 0.0;
  double n = 0.0;
  double k = 0.0;
  double time_s = 0.0;         // raw Eigen product (one GEMM of the full shape)
  double flops_per_s = 0.0;    // raw Eigen
  double backend_time_s = 0.0; // the same work through the CPU backend (exec/cpu/linear: split QKV / gate-up
                               // GEMMs, bias; backward dgrad + wgrad + bias grad split in the ratio of raw Eigen)
};

struct CollectiveMeasurement {
  double msg_bytes = 0.0; // per-rank buffer
  double time_s = 0.0;    // slowest rank
  double algbw_bytes_per_s = 0.0;
  double busbw_bytes_per_s = 0.0; // algbw * 2(n-1)/n (nccl-tests doc/PERFORMANCE.md)
};

/// One unit of the model (one micro-batch through the embedding, a layer or the head, forward or backward, or one
/// optimizer step) timed whole on one TP shard, and how the time splits for the fit of the memory-bound ops.
struct UnitMeasurement {
  std::string name;          // "layer.fwd", "head.bwd", "optimizer", ...
  int tp = 1;
  double time_s = 0.0;       // measured
  double compute_s = 0.0;    // its GEMMs and attention, as measured on their own
  double memory_ops = 0.0;   // IR ops priced by bytes (norms, activations, residual adds, embedding, loss, Adam)
  double memory_bytes = 0.0; // their IR bytes
  double kernel_s = 0.0;     // ops priced by a measured CPU kernel (norms, activations, RoPE): elements x s + per-op
  double predicted_s = 0.0;  // the unit as the finished profile predicts it
  // --- in-situ units (issue 5) ---
  bool in_situ = false;      // time_s is the mean of the unit's tasks in real training steps
  double alone_s = 0.0;      // the unit timed alone (best repeat), for comparison
  double in_situ_wall_s = 0.0; // in situ: mean wall time (time_s is the CPU time when in_situ_cpu_time)
  int in_situ_tasks = 0;
};

/// --- CPU prediction across models (branch cpux) --- One CPU backend kernel timed alone (best repeat) on this
/// model's sizes: every norm and activation variant, whatever the model uses, so that the profile prices another
/// model's kernels (CostProfile cpu_*_s_per_element).
struct KernelMeasurement {
  std::string name;        // "layernorm.fwd", "rmsnorm.bwd", "gelu.fwd", "swiglu.bwd", "rope", ...
  double elements = 0.0;   // norm input (tokens x hidden), activation output (tokens x ffn), rotated values
  double time_s = 0.0;
  double s_per_element = 0.0; // (time_s - the per-op cost) / elements, at least 0
};

struct CalibrationResult {
  model::CostProfile profile;
  std::vector<KernelMeasurement> kernels;
  std::vector<GemmMeasurement> gemms;
  std::vector<CollectiveMeasurement> allreduce;
  std::vector<UnitMeasurement> units;
  double attention_flops_per_s = 0.0;     // forward, causal FLOPs (2 * B * H * T^2 * D)
  double attention_bwd_flops_per_s = 0.0; // backward, 2.5 x the causal forward FLOPs (the cost model's convention)
  /// Memory-bound ops in IR bytes per second (the IR counts 16-bit activations), fitted to the embedding, head and
  /// optimizer units minus their GEMMs and measured kernels. What a layer needs beyond its GEMMs, attention, measured
  /// norm / activation / RoPE kernels (`kernels`) and byte-priced ops goes into the attention efficiencies.
  double elementwise_bytes_per_s = 0.0;
  double launch_overhead_s = 0.0; // per op: tiny_op_s
  /// Seconds the attention floor (half its measured time) added to the fitted layers' forward / backward, summed over
  /// the fitted TP sizes; 0 unless a layer measured faster than its parts timed alone.
  double layer_fwd_floor_s = 0.0;
  double layer_bwd_floor_s = 0.0;
  double tiny_op_s = 0.0; // a 1x1 GEMM: the floor of any op on this machine
  std::int64_t eigen_peak_size = 0;     // N of the square N x N x N GEMM
  double eigen_peak_flops_per_s = 0.0;  // Eigen's own rate on a large square GEMM (one thread)
  double eigen_linear_flops_per_s = 0.0;   // all linear-layer GEMM FLOPs / raw Eigen time
  double backend_linear_flops_per_s = 0.0; // the same FLOPs / CPU backend time
  // --- in-situ units (issue 5) ---
  int in_situ_ranks = 0;             // ranks of the in-situ run (0: none)
  int in_situ_steps_measured = 0;    // steps whose tasks were used
  double in_situ_step_s = 0.0;       // median step time of those steps (rank 0, wall)
  double in_situ_tasks_s = 0.0;      // median over steps of rank 0's summed compute-stream task wall times
};

// --- in-situ units (issue 5) ---
/// Mean time of each unit in measured training steps (see unit_times_from_tasks).
struct InSituUnitTimes {
  // unit name ("embed.fwd", "embed.bwd", "layer.fwd", "layer.bwd", "head.fwd", "head.bwd", "optimizer") -> mean
  // seconds and number of tasks
  std::vector<std::string> names;
  std::vector<double> mean_s;
  std::vector<int> counts;
  [[nodiscard]] double at(const std::string& name) const; // throws std::out_of_range when not measured
  [[nodiscard]] int count(const std::string& name) const; // tasks of the unit (0: none)
};

/// t = latency_s + seconds_per_byte * S fitted to an all-reduce sweep (least squares on the relative error; slope at
/// least 1e-15 s/B, latency at least 0).
struct AlphaBeta {
  double latency_s = 0.0;
  double seconds_per_byte = 0.0;
};
AlphaBeta fit_alpha_beta(const std::vector<CollectiveMeasurement>& sweep);

/// Unit of a runtime task from its IR label ("fwd L3 mb2 s0c0 r1" -> "layer.fwd", "bwd head mb0 ..." -> "head.bwd",
/// "optimizer ..." -> "optimizer"); "" for every other task (collectives, sends, receives).
std::string unit_of_task(const std::string& label);
/// Mean per unit of measured tasks: `durations_s[i]` is the time of task `labels[i]` (wall or CPU time).
InSituUnitTimes unit_times_from_tasks(const std::vector<std::string>& labels, const std::vector<double>& durations_s);

/// Collective over `world` (all ranks take part in the all-reduce sweep; compute is measured on every rank and the
/// slowest rank's numbers are kept). The profile is valid on every rank.
CalibrationResult calibrate(const model::ModelSpec& model, const model::Plan& plan, const CalibrationOptions& options,
                            Communicator& world);

} // namespace cuboid::exec
