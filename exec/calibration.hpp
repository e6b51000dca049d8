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
  double predicted_s = 0.0;  // the unit as the finished profile predicts it
};

struct CalibrationResult {
  model::CostProfile profile;
  std::vector<GemmMeasurement> gemms;
  std::vector<CollectiveMeasurement> allreduce;
  std::vector<UnitMeasurement> units;
  double attention_flops_per_s = 0.0;     // forward, causal FLOPs (2 * B * H * T^2 * D)
  double attention_bwd_flops_per_s = 0.0; // backward, 2.5 x the causal forward FLOPs (the cost model's convention)
  /// Memory-bound ops in IR bytes per second (the IR counts 16-bit activations), fitted to the embedding, head and
  /// optimizer units minus their GEMMs. What a layer needs beyond that goes into the attention efficiencies.
  double elementwise_bytes_per_s = 0.0;
  double launch_overhead_s = 0.0; // per op: tiny_op_s
  double tiny_op_s = 0.0; // a 1x1 GEMM: the floor of any op on this machine
  std::int64_t eigen_peak_size = 0;     // N of the square N x N x N GEMM
  double eigen_peak_flops_per_s = 0.0;  // Eigen's own rate on a large square GEMM (one thread)
  double eigen_linear_flops_per_s = 0.0;   // all linear-layer GEMM FLOPs / raw Eigen time
  double backend_linear_flops_per_s = 0.0; // the same FLOPs / CPU backend time
};

/// Collective over `world` (all ranks take part in the all-reduce sweep; compute is measured on every rank and the
/// slowest rank's numbers are kept). The profile is valid on every rank.
CalibrationResult calibrate(const model::ModelSpec& model, const model::Plan& plan, const CalibrationOptions& options,
                            Communicator& world);

} // namespace cuboid::exec
