// Parsing and checking of the launcher's environment variables.
#include "exec/cuda/launch_env.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cstdlib>

namespace cuboid::exec::cuda {

namespace {

constexpr const char* WHERE = "environment";

int parse_int(const std::string& name, const std::string& value, int min_value, int max_value) {
  int out = 0;
  const char* end = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(value.data(), end, out);
  if (ec != std::errc() || ptr != end || out < min_value || out > max_value) {
    throw InputError(input_message(WHERE, name,
                                   fmt::format("invalid value \"{}\" (expected an integer in [{}, {}])", value,
                                               min_value, max_value)));
  }
  return out;
}

std::string required(const EnvLookup& env, const std::string& name, const std::string& why) {
  const auto value = env(name);
  if (!value || value->empty()) {
    throw InputError(input_message(WHERE, name, fmt::format("not set ({})", why)));
  }
  return *value;
}

constexpr int MAX_RANKS = 1 << 24;
constexpr int MAX_PORT = 65535;

} // namespace

LaunchEnv read_launch_env(const EnvLookup& env) {
  LaunchEnv out;
  std::string rank_var;
  std::string size_var;
  std::string local_var;
  std::string local_size_var;
  if (env("RANK") || env("WORLD_SIZE")) {
    out.launcher = "torchrun";
    rank_var = "RANK";
    size_var = "WORLD_SIZE";
    local_var = "LOCAL_RANK";
    local_size_var = "LOCAL_WORLD_SIZE";
  } else if (env("OMPI_COMM_WORLD_RANK")) {
    out.launcher = "mpirun";
    rank_var = "OMPI_COMM_WORLD_RANK";
    size_var = "OMPI_COMM_WORLD_SIZE";
    local_var = "OMPI_COMM_WORLD_LOCAL_RANK";
    local_size_var = "OMPI_COMM_WORLD_LOCAL_SIZE";
  } else {
    out.launcher = "single process";
    return out;
  }
  const std::string why = fmt::format("{} launch sets it", out.launcher);
  out.world_size = parse_int(size_var, required(env, size_var, why), 1, MAX_RANKS);
  out.rank = parse_int(rank_var, required(env, rank_var, why), 0, out.world_size - 1);
  if (out.world_size == 1) {
    const auto local = env(local_var);
    out.local_rank = local ? parse_int(local_var, *local, 0, 0) : 0;
    return out;
  }
  out.local_rank = parse_int(local_var, required(env, local_var, why), 0, out.world_size - 1);
  out.local_world_size = 0;
  if (const auto local_size = env(local_size_var)) {
    out.local_world_size = parse_int(local_size_var, *local_size, 1, out.world_size);
    if (out.local_rank >= out.local_world_size) {
      throw InputError(input_message(WHERE, local_var,
                                     fmt::format("invalid value \"{}\" (expected < {}={})", out.local_rank,
                                                 local_size_var, out.local_world_size)));
    }
  }
  const std::string rdv = "rank 0's host for the NCCL id rendezvous; with mpirun pass -x";
  out.master_addr = required(env, "MASTER_ADDR", rdv);
  out.master_port = parse_int("MASTER_PORT", required(env, "MASTER_PORT", rdv), 1, MAX_PORT);
  return out;
}

LaunchEnv read_process_launch_env() {
  return read_launch_env([](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) {
      return std::nullopt;
    }
    return std::string(value);
  });
}

} // namespace cuboid::exec::cuda
