// LaunchEnv: who this process is in a multi-process GPU job launched WITHOUT linking MPI, read from the environment
// the launcher sets: torchrun / torch.distributed.run (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT), or mpirun of Open MPI (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK; MASTER_ADDR / MASTER_PORT exported
// by the user with `mpirun -x`). No variable set: one process. The rendezvous (rendezvous.hpp) then broadcasts the
// NCCL unique id from rank 0 over TCP at MASTER_ADDR:MASTER_PORT.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace cuboid::exec::cuda {

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;       // selects the GPU: cudaSetDevice(local_rank)
  int local_world_size = 1; // processes on this node (0 when the launcher does not say)
  std::string master_addr;  // host of rank 0 (empty for one process)
  int master_port = 0;
  std::string launcher;     // "torchrun", "mpirun", "single process"
};

/// Looks up one environment variable (std::nullopt when unset). Tests pass a map; production passes getenv.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

/// Reads the launch environment. Throws InputError naming the variable, its value and the valid range for a
/// malformed or inconsistent value (e.g. RANK=4 with WORLD_SIZE=4), or when a multi-process job lacks
/// MASTER_ADDR / MASTER_PORT / LOCAL_RANK. Never defaults a missing variable silently.
LaunchEnv read_launch_env(const EnvLookup& env);
/// read_launch_env over the process environment (std::getenv).
LaunchEnv read_process_launch_env();

} // namespace cuboid::exec::cuda
