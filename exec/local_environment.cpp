// CommEnvironment without MPI: the world is one process.
#include "exec/comm_environment.hpp"

#include "exec/local_communicator.hpp"

namespace cuboid::exec {

CommEnvironment::CommEnvironment(int& /*argc*/, char**& /*argv*/) : world_(std::make_unique<LocalCommunicator>()) {}
CommEnvironment::~CommEnvironment() = default;
bool CommEnvironment::has_mpi() { return false; }

} // namespace cuboid::exec
