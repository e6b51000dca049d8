// CPU calibration microbenchmarks: time the GEMM shapes a model and plan actually run (forward, data-gradient and
// weight-gradient GEMMs of every linear layer and the output layer), causal attention, a memory-bound elementwise
// op, and all-reduce by message size over a communicator, then express them as a model::CostProfile (fractions of
// the given peaks, an alpha-beta fit for collectives) that `cuboid calibrate` saves with model::save_profile.
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
};

struct GemmMeasurement {
  std::string label;      // "qkv.fwd", "fc2.wgrad", ...
  double m = 0.0;
  double n = 0.0;
  double k = 0.0;
  double time_s = 0.0;
  double flops_per_s = 0.0;
};

struct CollectiveMeasurement {
  double msg_bytes = 0.0; // per-rank buffer
  double time_s = 0.0;    // slowest rank
  double algbw_bytes_per_s = 0.0;
  double busbw_bytes_per_s = 0.0; // algbw * 2(n-1)/n (nccl-tests doc/PERFORMANCE.md)
};

struct CalibrationResult {
  model::CostProfile profile;
  std::vector<GemmMeasurement> gemms;
  std::vector<CollectiveMeasurement> allreduce;
  double attention_flops_per_s = 0.0;
  double elementwise_bytes_per_s = 0.0;
  double launch_overhead_s = 0.0; // time of a tiny op: the per-task fixed cost on this machine
};

/// Collective over `world` (all ranks take part in the all-reduce sweep; compute is measured on every rank and the
/// slowest rank's numbers are kept). The profile is valid on every rank.
CalibrationResult calibrate(const model::ModelSpec& model, const model::Plan& plan, const CalibrationOptions& options,
                            Communicator& world);

} // namespace cuboid::exec
