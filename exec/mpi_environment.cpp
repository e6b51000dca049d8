// CommEnvironment with MPI: initialises MPI with MPI_THREAD_MULTIPLE when possible (the watchdog thread may call
// MPI_Abort), makes MPI errors return codes, and finalises only if it initialised. Built only with MPI.
#include "exec/comm_environment.hpp"

#include "exec/device_error.hpp"
#include "exec/mpi_communicator.hpp"

#include <mpi.h>

namespace cuboid::exec {

CommEnvironment::CommEnvironment(int& argc, char**& argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized == 0) {
    int provided = 0;
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
      throw DeviceError(device_error_message("MPI_Init_thread", -1, __FILE__, __LINE__, "initialisation failed"));
    }
    initialized_here_ = true;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  world_ = MpiCommunicator::world();
}

CommEnvironment::~CommEnvironment() {
  world_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (initialized_here_ && finalized == 0) {
    MPI_Finalize();
  }
}

bool CommEnvironment::has_mpi() { return true; }

} // namespace cuboid::exec
