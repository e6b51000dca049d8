// DeviceError: a failed call into a device or communication library (MPI, later CUDA/NCCL), with the call, the
// rank, and file:line (STYLE.md section 5, as NVIDIA/nccl-tests' MPICHECK). Thrown only by exec/.
#pragma once

#include <stdexcept>
#include <string>

namespace cuboid::exec {

class DeviceError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// "MPI_Allreduce(...) failed on rank 3 at exec/mpi_communicator.cpp:120: <detail>"
[[nodiscard]] std::string device_error_message(const std::string& call, int rank, const char* file, int line,
                                               const std::string& detail);

} // namespace cuboid::exec
