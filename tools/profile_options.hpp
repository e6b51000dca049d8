// Flags that override the cost profile's numbers (every number a user might dispute is overridable, DESIGN.md).
#pragma once

#include "model/cost_profile.hpp"
#include "model/gpu_spec.hpp"
#include "tools/plan_options.hpp"

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

namespace cuboid::tools {

struct ProfileFlags {
  std::optional<double> gemm_efficiency;      // fraction of dense peak for large GEMMs
  std::optional<double> attention_efficiency; // fraction of dense peak
  std::optional<double> hbm_efficiency;       // fraction of HBM bandwidth
  std::optional<double> nvlink_efficiency;    // fraction of NVLink wire bandwidth
  std::optional<double> nic_efficiency;       // fraction of NIC wire bandwidth
  std::optional<double> launch_overhead_us;   // per kernel
};

void add_profile_flags(CLI::App& app, ProfileFlags& flags);

/// The profile for `cluster`: --profile FILE if given, else the shipped default for its GPU; then flag overrides.
/// Throws InputError for out-of-range overrides (efficiencies in (0, 1], overhead >= 0).
model::CostProfile resolve_profile(const ProfileFlags& flags, const ClusterFlags& cluster_flags,
                                   const model::ClusterSpec& cluster);
/// Applies the flag overrides to `profile` (same checks as resolve_profile); used for measured profiles.
model::CostProfile apply_profile_flags(const ProfileFlags& flags, model::CostProfile profile);

/// `--gemm-algo` of `run` and `calibrate` under `--backend cuda` (default "autotune"): true for autotune, false for
/// heuristic. An unknown value is an InputError naming the flag, the value and the valid ones.
bool gemm_autotune_flag(const std::string& value);
/// With a backend other than cuda, `--gemm-algo` must be left at its default: an InputError otherwise.
void require_default_gemm_algo(const std::string& value);

} // namespace cuboid::tools
