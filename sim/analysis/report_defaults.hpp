// Default economic and physical assumptions of `cuboid report`: GPU-hour prices (with provider, instance, date and
// source, copied from scenarios/hardware/prices.csv), board power per GPU, server overhead, PUE, checkpoint size.
// Every value is printed with the report and overridable from the command line; see
// scenarios/hardware/power_and_mtbf.md for the sources.
#pragma once

#include "model/model_spec.hpp"

#include <optional>
#include <string>
#include <vector>

namespace cuboid::sim::analysis {

/// One price row of scenarios/hardware/prices.csv, or a user override (provider "user", user_override = true).
struct GpuPrice {
  std::string gpu;
  double usd_per_gpu_hour = 0.0;
  std::string provider;  // "aws", "gcp", "azure", "user"
  std::string instance;  // "p5.48xlarge"
  std::string region;
  std::string pricing;   // "on-demand"
  std::string as_of;     // date the price was seen ("2026-11-09"); "" for overrides
  std::string source;
  bool user_override = false;
};

/// The default price of a GPU: the cheapest on-demand hyperscaler row of prices.csv that has an as_of date.
/// std::nullopt when prices.csv has no row for the GPU (the user must pass --price-per-gpu-hour GPU=USD).
std::optional<GpuPrice> default_price(const std::string& gpu);
/// Every embedded default row (one per GPU), for listing and tests.
const std::vector<GpuPrice>& default_prices();

/// Board power (TDP) of a GPU in watts, from its datasheet, used when the GPU catalog has no power_w.
/// std::nullopt for an unknown GPU.
struct GpuPower {
  double watts = 0.0;
  std::string source;
};
std::optional<GpuPower> default_power(const std::string& gpu);

/// Facility assumptions (see power_and_mtbf.md).
/// Non-GPU server power (CPUs, DRAM, NICs, fans, in-rack switches) as a multiple of GPU board power: DGX H100 is
/// rated 10.2 kW max for 8 x 700 W GPUs (1.8x at maximum); 1.5x assumes typical rather than maximum draw.
constexpr double DEFAULT_SERVER_OVERHEAD = 1.5;
/// Power usage effectiveness of the data centre (facility power / IT power); a modern hyperscale hall.
constexpr double DEFAULT_PUE = 1.2;
/// Per-GPU mean time between job-interrupting failures, hours: Llama 3 (Dubey et al. 2024, sec. 3.3.4) saw 419
/// unexpected interruptions in 54 days on 16,384 H100 GPUs, i.e. 16384 * 54 * 24 / 419 = 50,676 GPU-hours each.
constexpr double DEFAULT_MTBF_GPU_HOURS = 50'000.0;
/// Restart after a failure (detect, reschedule, reload the checkpoint, warm up), seconds. Assumption; Daly (2006)
/// uses R = 10 min in his worked examples.
constexpr double DEFAULT_RESTART_S = 600.0;
/// Checkpoint size per parameter: bf16 weights (2 B) + fp32 master weights and Adam moments (3 x 4 B).
constexpr double CHECKPOINT_BYTES_PER_PARAM = 14.0;
/// Aggregate write bandwidth of the checkpoint file system (assumption: a parallel file system, synchronous save).
constexpr double CHECKPOINT_WRITE_BYTES_PER_S = 50e9;

/// Default checkpoint write time of a model: parameters * 14 B / 50 GB/s.
double default_checkpoint_write_s(const model::ModelSpec& model);

} // namespace cuboid::sim::analysis
