// cuboid_exec_alltoall: checks Communicator::all_to_all_v (the MoE dispatch / combine collective) on the world and
// on EP-style sub-communicators, under mpirun -np N or as one process. Inputs are exactly predictable (nccl-tests
// "verifiable" style): member r sends r + p + 1 floats valued 1000 r + 10 p + i to member p, so member p must
// receive from r exactly those values. Both the backend's implementation and the pairwise send/recv default of the
// Communicator base class are checked. Exits non-zero naming the rank and the first wrong element.
#include "exec/comm_environment.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <vector>

namespace {

using cuboid::exec::Communicator;

// Returns the number of wrong elements on this member (printed with the first one).
int check(Communicator& comm, bool base_implementation, const char* what) {
  const int me = comm.rank();
  const int members = comm.size();
  std::vector<int> send_counts(static_cast<std::size_t>(members));
  std::vector<int> recv_counts(static_cast<std::size_t>(members));
  std::vector<float> in;
  for (int peer = 0; peer < members; ++peer) {
    send_counts[static_cast<std::size_t>(peer)] = me + peer + 1;
    recv_counts[static_cast<std::size_t>(peer)] = peer + me + 1;
    for (int idx = 0; idx < me + peer + 1; ++idx) {
      in.push_back(static_cast<float>(1000 * me + 10 * peer + idx));
    }
  }
  std::vector<float> out(static_cast<std::size_t>(members * (members + 1) / 2 + members * me), -1.0F);
  if (base_implementation) {
    comm.Communicator::all_to_all_v(in, send_counts, out, recv_counts);
  } else {
    comm.all_to_all_v(in, send_counts, out, recv_counts);
  }
  int wrong = 0;
  std::size_t at = 0;
  for (int peer = 0; peer < members; ++peer) {
    for (int idx = 0; idx < peer + me + 1; ++idx, ++at) {
      const auto expected = static_cast<float>(1000 * peer + 10 * me + idx);
      if (out[at] != expected && wrong++ == 0) {
        std::fprintf(stderr, "%s", fmt::format("{}: rank {} of {}: element {} from peer {} is {}, expected {}\n", what,
                                               me, members, idx, peer, out[at], expected).c_str());
      }
    }
  }
  return wrong;
}

} // namespace

int main(int argc, char** argv) {
  try {
    cuboid::exec::CommEnvironment env(argc, argv);
    Communicator& world = env.world();
    int wrong = check(world, false, "world");
    wrong += check(world, true, "world (send/recv default)");
    // EP groups as in model/rank_grid.hpp with tp = 1: pairs of consecutive ranks {0,1} {2,3} ...
    const std::unique_ptr<Communicator> ep = world.split(world.rank() / 2, world.rank());
    wrong += check(*ep, false, "ep pair");
    wrong += check(*ep, true, "ep pair (send/recv default)");
    if (wrong != 0) {
      return 1;
    }
    if (world.rank() == 0) {
      std::printf("all_to_all_v: %d ranks, world and EP pairs, backend and default implementation agree\n",
                  world.size());
    }
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "cuboid_exec_alltoall: %s\n", error.what());
    return 1;
  }
}
