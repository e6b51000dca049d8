// CommEnvironment: the process-wide communication set-up for a run. With MPI (CUBOID_ENABLE_MPI) it calls
// MPI_Init_thread / MPI_Finalize and exposes MPI_COMM_WORLD; without, the world is a LocalCommunicator. The two
// implementations are different source files (mpi_environment.cpp, local_environment.cpp), chosen by CMake.
#pragma once

#include "exec/communicator.hpp"

#include <memory>

namespace cuboid::exec {

class CommEnvironment {
public:
  /// Create exactly one per process, in main(), before any other thread starts.
  CommEnvironment(int& argc, char**& argv);
  ~CommEnvironment();
  CommEnvironment(const CommEnvironment&) = delete;
  CommEnvironment& operator=(const CommEnvironment&) = delete;

  [[nodiscard]] Communicator& world() { return *world_; }
  /// True when this build has the MPI backend.
  [[nodiscard]] static bool has_mpi();

private:
  std::unique_ptr<Communicator> world_;
  bool initialized_here_ = false; // MPI_Init was called by this object, so it calls MPI_Finalize
};

} // namespace cuboid::exec
