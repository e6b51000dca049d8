// Cost-profile selection and command-line overrides (see profile_options.hpp).
#include "tools/profile_options.hpp"

#include "model/cpu_device.hpp"
#include "model/errors.hpp"

#include <fmt/format.h>

#include <cmath>

namespace cuboid::tools {

namespace {
constexpr double US = 1e-6;

void override_fraction(const char* flag, const std::optional<double>& value, double& field,
                       std::vector<std::string>& notes) {
  if (!value) {
    return;
  }
  if (!std::isfinite(*value) || *value <= 0.0 || *value > 1.0) {
    throw InputError(input_message("command line", flag, fmt::format("{} is not a fraction in (0, 1]", *value)));
  }
  field = *value;
  notes.push_back(fmt::format("{} {} (command line)", flag, *value));
}
} // namespace

void add_profile_flags(CLI::App& app, ProfileFlags& flags) {
  app.add_option("--gemm-efficiency", flags.gemm_efficiency, "Override: large-GEMM fraction of dense peak");
  app.add_option("--attention-efficiency", flags.attention_efficiency, "Override: attention fraction of peak");
  app.add_option("--hbm-efficiency", flags.hbm_efficiency, "Override: fraction of HBM bandwidth achieved");
  app.add_option("--nvlink-efficiency", flags.nvlink_efficiency, "Override: fraction of NVLink bandwidth");
  app.add_option("--nic-efficiency", flags.nic_efficiency, "Override: fraction of NIC bandwidth");
  app.add_option("--launch-overhead-us", flags.launch_overhead_us, "Override: kernel launch overhead (us)");
}

model::CostProfile resolve_profile(const ProfileFlags& flags, const ClusterFlags& cluster_flags,
                                   const model::ClusterSpec& cluster) {
  if (!cluster_flags.profile) {
    return apply_profile_flags(flags, model::default_profile(cluster.gpu.name));
  }
  const model::CostProfile profile = model::load_profile(*cluster_flags.profile);
  // A CPU profile's efficiencies are fractions of the cpu device's reference rates (model/cpu_device.hpp): on a GPU
  // they would mean nothing, and a GPU profile means nothing on the cpu device.
  const bool cpu_profile = profile.gpu == model::CPU_DEVICE_NAME;
  if (cpu_profile != (cluster.gpu.name == model::CPU_DEVICE_NAME)) {
    throw InputError(input_message(*cluster_flags.profile, "gpu",
                                   fmt::format("profile for '{}' used on a cluster of '{}' ({})", profile.gpu,
                                               cluster.gpu.name,
                                               cpu_profile ? "pass --gpu cpu to predict a CPU run"
                                                           : "a CPU cluster (--gpu cpu) needs a CPU profile")));
  }
  return apply_profile_flags(flags, profile);
}

model::CostProfile apply_profile_flags(const ProfileFlags& flags, model::CostProfile profile) {
  std::vector<std::string> notes;
  override_fraction("--gemm-efficiency", flags.gemm_efficiency, profile.gemm_max_efficiency, notes);
  override_fraction("--attention-efficiency", flags.attention_efficiency, profile.attention_efficiency, notes);
  override_fraction("--hbm-efficiency", flags.hbm_efficiency, profile.hbm_efficiency, notes);
  override_fraction("--nvlink-efficiency", flags.nvlink_efficiency, profile.nvlink_efficiency, notes);
  override_fraction("--nic-efficiency", flags.nic_efficiency, profile.nic_efficiency, notes);
  if (flags.launch_overhead_us) {
    const double value = *flags.launch_overhead_us;
    if (!std::isfinite(value) || value < 0.0) {
      throw InputError(input_message("command line", "--launch-overhead-us",
                                     fmt::format("{} must be a finite number >= 0", value)));
    }
    profile.launch_overhead_s = value * US;
    notes.push_back(fmt::format("--launch-overhead-us {} (command line)", value));
  }
  for (auto& note : notes) {
    profile.assumptions.push_back(std::move(note));
  }
  return profile;
}

bool gemm_autotune_flag(const std::string& value) {
  if (value != "autotune" && value != "heuristic") {
    throw InputError(input_message("command line", "--gemm-algo",
                                   fmt::format("unknown value '{}' (valid: heuristic, autotune)", value)));
  }
  return value == "autotune";
}

void require_default_gemm_algo(const std::string& value) {
  if (value != "autotune") {
    throw InputError(input_message("command line", "--gemm-algo",
                                   fmt::format("'{}' is only used by --backend cuda (valid there: heuristic, autotune; "
                                               "leave it out with another backend)",
                                               value)));
  }
}

} // namespace cuboid::tools
