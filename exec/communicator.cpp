// Helpers built on the Communicator interface (independent of the backend).
#include "exec/communicator.hpp"

#include "exec/device_error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

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

std::size_t equal_block(const Communicator& comm, std::size_t elements, const char* what) {
  const auto members = static_cast<std::size_t>(comm.size());
  if (elements % members != 0) {
    throw DeviceError(device_error_message(what, comm.world_rank(), __FILE__, __LINE__,
                                           fmt::format("{} elements are not {} equal blocks", elements, members)));
  }
  return elements / members;
}

namespace {
struct CompletedRequest final : Request {
  void wait() override {}
};
} // namespace

std::unique_ptr<Request> Communicator::reduce_scatter_in_place_async(std::span<float> data) {
  const std::size_t block = equal_block(*this, data.size(), "reduce_scatter_in_place_async");
  const std::vector<float> in(data.begin(), data.end());
  reduce_scatter(in, data.subspan(static_cast<std::size_t>(rank()) * block, block));
  return std::make_unique<CompletedRequest>();
}

void Communicator::all_gather_in_place(std::span<float> data) {
  const std::size_t block = equal_block(*this, data.size(), "all_gather_in_place");
  const auto mine = data.subspan(static_cast<std::size_t>(rank()) * block, block);
  const std::vector<float> in(mine.begin(), mine.end());
  all_gather(in, data);
}

std::unique_ptr<Request> Communicator::all_gather_in_place_async(std::span<float> data) {
  all_gather_in_place(data);
  return std::make_unique<CompletedRequest>();
}

// --- mixture of experts ---
namespace {
constexpr int ALLTOALL_TAG = 32003; // after gather_doubles' tags, below MPI_TAG_UB >= 32767

std::vector<std::size_t> offsets_of(std::span<const int> counts) {
  std::vector<std::size_t> offsets(counts.size() + 1, 0);
  for (std::size_t peer = 0; peer < counts.size(); ++peer) {
    offsets[peer + 1] = offsets[peer] + static_cast<std::size_t>(counts[peer]);
  }
  return offsets;
}
} // namespace

void Communicator::all_to_all_v(std::span<const float> in, std::span<const int> send_counts, std::span<float> out,
                                std::span<const int> recv_counts) {
  const auto members = static_cast<std::size_t>(size());
  const auto negative = [](std::span<const int> counts) {
    return std::any_of(counts.begin(), counts.end(), [](int count) { return count < 0; });
  };
  if (send_counts.size() != members || recv_counts.size() != members || negative(send_counts) ||
      negative(recv_counts)) {
    throw DeviceError(device_error_message("all_to_all_v", world_rank(), __FILE__, __LINE__,
                                           fmt::format("{} send / {} recv counts for {} members (one non-negative "
                                                       "count per member expected)",
                                                       send_counts.size(), recv_counts.size(), members)));
  }
  const std::vector<std::size_t> send_at = offsets_of(send_counts);
  const std::vector<std::size_t> recv_at = offsets_of(recv_counts);
  if (send_at.back() != in.size() || recv_at.back() != out.size()) {
    throw DeviceError(device_error_message("all_to_all_v", world_rank(), __FILE__, __LINE__,
                                           fmt::format("in has {} floats (counts sum to {}), out has {} (counts sum "
                                                       "to {})",
                                                       in.size(), send_at.back(), out.size(), recv_at.back())));
  }
  const auto me = static_cast<std::size_t>(rank());
  std::vector<std::unique_ptr<Request>> sends;
  for (std::size_t peer = 0; peer < members; ++peer) {
    if (peer != me && send_counts[peer] > 0) {
      sends.push_back(send(in.subspan(send_at[peer], static_cast<std::size_t>(send_counts[peer])),
                           static_cast<int>(peer), ALLTOALL_TAG));
    }
  }
  if (send_counts[me] != recv_counts[me]) {
    throw DeviceError(device_error_message("all_to_all_v", world_rank(), __FILE__, __LINE__,
                                           fmt::format("sends {} floats to itself but expects {}", send_counts[me],
                                                       recv_counts[me])));
  }
  std::copy_n(in.begin() + static_cast<std::ptrdiff_t>(send_at[me]), static_cast<std::size_t>(send_counts[me]),
              out.begin() + static_cast<std::ptrdiff_t>(recv_at[me]));
  for (std::size_t peer = 0; peer < members; ++peer) {
    if (peer != me && recv_counts[peer] > 0) {
      recv(out.subspan(recv_at[peer], static_cast<std::size_t>(recv_counts[peer])), static_cast<int>(peer),
           ALLTOALL_TAG);
    }
  }
  for (auto& request : sends) {
    request->wait();
  }
}

} // namespace cuboid::exec
