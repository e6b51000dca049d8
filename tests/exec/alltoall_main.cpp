// cuboid_exec_alltoall: checks Communicator::all_to_all_v (the MoE dispatch / combine collective) on the world and
// on EP-style sub-communicators, under mpirun -np N or as one process. Inputs are exactly predictable (nccl-tests
// "verifiable" style): member r sends r + p + 1 floats valued 1000 r + 10 p + i to member p, so member p must
// receive from r exactly those values. Both the backend's implementation and the pairwise send/recv default of the
// Communicator base class are checked. Also the in-place reduce-scatter and all-gather of the distributed optimizer
// (the base class's defaults, which host-memory backends use). Exits non-zero naming the rank and the first wrong
// element.
#include "exec/comm_environment.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <utility>
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

// In-place reduce-scatter then all-gather over blocks of 3: member r starts with 100 r + i at element i; block b
// of member b must hold the sum over members, and after the all-gather every member holds every block's sum.
int check_in_place(Communicator& comm, const char* what) {
  const int members = comm.size();
  constexpr int BLOCK = 3;
  std::vector<float> data(static_cast<std::size_t>(BLOCK * members));
  for (std::size_t idx = 0; idx < data.size(); ++idx) {
    data[idx] = static_cast<float>(100 * comm.rank()) + static_cast<float>(idx);
  }
  const auto expected = [&](std::size_t idx) {
    return static_cast<float>(100 * members * (members - 1) / 2) +
           static_cast<float>(members) * static_cast<float>(idx);
  };
  comm.reduce_scatter_in_place_async(data)->wait();
  int wrong = 0;
  const auto verify = [&](std::size_t idx, const char* phase) {
    if (data[idx] != expected(idx) && wrong++ == 0) {
      std::fprintf(stderr, "%s", fmt::format("{} ({}): rank {} of {}: element {} is {}, expected {}\n", what, phase,
                                             comm.rank(), members, idx, data[idx], expected(idx)).c_str());
    }
  };
  for (int idx = 0; idx < BLOCK; ++idx) {
    verify(static_cast<std::size_t>(BLOCK * comm.rank() + idx), "reduce-scatter");
  }
  std::vector<float> copy = data;
  comm.all_gather_in_place(data);
  for (std::size_t idx = 0; idx < data.size(); ++idx) {
    verify(idx, "all-gather");
  }
  std::swap(copy, data);
  comm.all_gather_in_place_async(data)->wait();
  for (std::size_t idx = 0; idx < data.size(); ++idx) {
    verify(idx, "async all-gather");
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
    wrong += check_in_place(world, "world in-place pair");
    wrong += check_in_place(*ep, "ep pair in-place pair");
    if (wrong != 0) {
      return 1;
    }
    if (world.rank() == 0) {
      std::printf("all_to_all_v: %d ranks, world and EP pairs, backend and default implementation agree; in-place "
                  "reduce-scatter and all-gather exact\n",
                  world.size());
    }
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "cuboid_exec_alltoall: %s\n", error.what());
    return 1;
  }
}
