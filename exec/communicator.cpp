// Helpers built on the Communicator interface (independent of the backend).
#include "exec/communicator.hpp"

namespace cuboid::exec {

std::vector<std::vector<double>> gather_doubles(Communicator& comm, std::span<const double> data) {
  constexpr int COUNT_TAG = 32001; // above every pipeline and weight-gather tag, below MPI_TAG_UB >= 32767
  constexpr int DATA_TAG = 32002;
  std::vector<std::vector<double>> out;
  if (comm.rank() != 0) {
    const double count = static_cast<double>(data.size());
    comm.send_doubles(std::span<const double>(&count, 1), 0, COUNT_TAG);
    comm.send_doubles(data, 0, DATA_TAG);
    return out;
  }
  out.resize(static_cast<std::size_t>(comm.size()));
  out[0].assign(data.begin(), data.end());
  for (int peer = 1; peer < comm.size(); ++peer) {
    double count = 0.0;
    comm.recv_doubles(std::span<double>(&count, 1), peer, COUNT_TAG);
    auto& buf = out[static_cast<std::size_t>(peer)];
    buf.resize(static_cast<std::size_t>(count));
    comm.recv_doubles(buf, peer, DATA_TAG);
  }
  return out;
}

} // namespace cuboid::exec
