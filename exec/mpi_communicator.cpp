// MpiCommunicator: the Communicator interface on MPI (fp32 buffers, MPI_Allreduce / Reduce_scatter_block /
// Allgather / Isend / Recv). Built only when CUBOID_ENABLE_MPI is ON. MPI errors are returned (MPI_ERRORS_RETURN is
// set by CommEnvironment) and turned into DeviceError with the call, rank and file:line.
#include "exec/mpi_communicator.hpp"

#include "exec/device_error.hpp"

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

namespace cuboid::exec {

namespace {
int world_rank_or_minus_one() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int rank = -1;
  if (initialized != 0) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  }
  return rank;
}

void mpi_check(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) {
    return;
  }
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw DeviceError(device_error_message(call, world_rank_or_minus_one(), file, line, std::string(text, static_cast<std::size_t>(length))));
}

int to_count(std::size_t n, const char* call) {
  if (n > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    throw DeviceError(device_error_message(call, world_rank_or_minus_one(), __FILE__, __LINE__,
                                           fmt::format("{} elements exceed the MPI int count limit", n)));
  }
  return static_cast<int>(n);
}
} // namespace

#define CUBOID_MPI_CHECK(expr) mpi_check((expr), #expr, __FILE__, __LINE__)

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = false;
  int rank = 0;
  int size = 1;
  int world_rank = 0;

  ~Impl() {
    if (owned && comm != MPI_COMM_NULL) {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (finalized == 0) {
        MPI_Comm_free(&comm);
      }
    }
  }
};

namespace {
class MpiRequest final : public Request {
public:
  MpiRequest(MPI_Request request, const char* call) : request_(request), call_(call) {}
  ~MpiRequest() override {
    if (request_ != MPI_REQUEST_NULL) {
      MPI_Wait(&request_, MPI_STATUS_IGNORE); // never leave MPI writing into a freed buffer
    }
  }
  MpiRequest(const MpiRequest&) = delete;
  MpiRequest& operator=(const MpiRequest&) = delete;
  void wait() override {
    if (request_ != MPI_REQUEST_NULL) {
      mpi_check(MPI_Wait(&request_, MPI_STATUS_IGNORE), call_, __FILE__, __LINE__);
    }
  }

private:
  MPI_Request request_;
  const char* call_;
};

std::unique_ptr<MpiCommunicator::Impl> make_impl(MPI_Comm comm, bool owned) {
  auto impl = std::make_unique<MpiCommunicator::Impl>();
  impl->comm = comm;
  impl->owned = owned;
  CUBOID_MPI_CHECK(MPI_Comm_rank(comm, &impl->rank));
  CUBOID_MPI_CHECK(MPI_Comm_size(comm, &impl->size));
  CUBOID_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &impl->world_rank));
  return impl;
}
} // namespace

MpiCommunicator::MpiCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MpiCommunicator::~MpiCommunicator() = default;

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  return std::make_unique<MpiCommunicator>(make_impl(MPI_COMM_WORLD, false));
}

int MpiCommunicator::rank() const { return impl_->rank; }
int MpiCommunicator::size() const { return impl_->size; }
int MpiCommunicator::world_rank() const { return impl_->world_rank; }

void MpiCommunicator::all_reduce(std::span<float> data, ReduceOp op) {
  // MPI_Allreduce with a commutative op gives the same bits on every member (ring, recursive doubling and
  // reduce+broadcast all combine identical partial sums) and the algorithm depends only on sizes, not timing.
  const MPI_Op mpi_op = op == ReduceOp::Sum ? MPI_SUM : MPI_MAX;
  CUBOID_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data.data(), to_count(data.size(), "MPI_Allreduce"), MPI_FLOAT, mpi_op,
                                 impl_->comm));
}

std::unique_ptr<Request> MpiCommunicator::all_reduce_async(std::span<float> data) {
  MPI_Request request = MPI_REQUEST_NULL;
  CUBOID_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data.data(), to_count(data.size(), "MPI_Iallreduce"), MPI_FLOAT,
                                  MPI_SUM, impl_->comm, &request));
  return std::make_unique<MpiRequest>(request, "MPI_Iallreduce");
}

void MpiCommunicator::reduce_scatter(std::span<const float> in, std::span<float> out) {
  if (in.size() != out.size() * static_cast<std::size_t>(impl_->size)) {
    throw DeviceError(device_error_message("MPI_Reduce_scatter_block", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("in has {} floats, expected out ({}) * size ({})", in.size(),
                                                       out.size(), impl_->size)));
  }
  CUBOID_MPI_CHECK(MPI_Reduce_scatter_block(in.data(), out.data(), to_count(out.size(), "MPI_Reduce_scatter_block"),
                                            MPI_FLOAT, MPI_SUM, impl_->comm));
}

void MpiCommunicator::all_gather(std::span<const float> in, std::span<float> out) {
  if (out.size() != in.size() * static_cast<std::size_t>(impl_->size)) {
    throw DeviceError(device_error_message("MPI_Allgather", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("out has {} floats, expected in ({}) * size ({})", out.size(),
                                                       in.size(), impl_->size)));
  }
  const int count = to_count(in.size(), "MPI_Allgather");
  CUBOID_MPI_CHECK(MPI_Allgather(in.data(), count, MPI_FLOAT, out.data(), count, MPI_FLOAT, impl_->comm));
}

std::unique_ptr<Request> MpiCommunicator::send(std::span<const float> data, int peer, int tag) {
  MPI_Request request = MPI_REQUEST_NULL;
  CUBOID_MPI_CHECK(MPI_Isend(data.data(), to_count(data.size(), "MPI_Isend"), MPI_FLOAT, peer, tag, impl_->comm,
                             &request));
  return std::make_unique<MpiRequest>(request, "MPI_Isend");
}

void MpiCommunicator::recv(std::span<float> data, int peer, int tag) {
  MPI_Status status;
  CUBOID_MPI_CHECK(MPI_Recv(data.data(), to_count(data.size(), "MPI_Recv"), MPI_FLOAT, peer, tag, impl_->comm, &status));
  int count = 0;
  CUBOID_MPI_CHECK(MPI_Get_count(&status, MPI_FLOAT, &count));
  if (static_cast<std::size_t>(count) != data.size()) {
    throw DeviceError(device_error_message("MPI_Recv", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("received {} floats from rank {} tag {}, expected {}", count,
                                                       peer, tag, data.size())));
  }
}

void MpiCommunicator::send_doubles(std::span<const double> data, int peer, int tag) {
  CUBOID_MPI_CHECK(MPI_Send(data.data(), to_count(data.size(), "MPI_Send"), MPI_DOUBLE, peer, tag, impl_->comm));
}

void MpiCommunicator::recv_doubles(std::span<double> data, int peer, int tag) {
  CUBOID_MPI_CHECK(MPI_Recv(data.data(), to_count(data.size(), "MPI_Recv"), MPI_DOUBLE, peer, tag, impl_->comm,
                            MPI_STATUS_IGNORE));
}

void MpiCommunicator::barrier() { CUBOID_MPI_CHECK(MPI_Barrier(impl_->comm)); }

// --- mixture of experts --- MPI_Alltoallv with displacements = prefix sums of the counts (checked like the base).
void MpiCommunicator::all_to_all_v(std::span<const float> in, std::span<const int> send_counts, std::span<float> out,
                                   std::span<const int> recv_counts) {
  const auto members = static_cast<std::size_t>(impl_->size);
  if (send_counts.size() != members || recv_counts.size() != members) {
    throw DeviceError(device_error_message("MPI_Alltoallv", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("{} send / {} recv counts for {} members", send_counts.size(),
                                                       recv_counts.size(), members)));
  }
  std::vector<int> send_displs(members, 0);
  std::vector<int> recv_displs(members, 0);
  std::size_t send_total = 0;
  std::size_t recv_total = 0;
  for (std::size_t peer = 0; peer < members; ++peer) {
    send_displs[peer] = to_count(send_total, "MPI_Alltoallv");
    recv_displs[peer] = to_count(recv_total, "MPI_Alltoallv");
    send_total += static_cast<std::size_t>(std::max(send_counts[peer], 0));
    recv_total += static_cast<std::size_t>(std::max(recv_counts[peer], 0));
  }
  const bool negative = std::any_of(send_counts.begin(), send_counts.end(), [](int c) { return c < 0; }) ||
                        std::any_of(recv_counts.begin(), recv_counts.end(), [](int c) { return c < 0; });
  if (negative || send_total != in.size() || recv_total != out.size()) {
    throw DeviceError(device_error_message("MPI_Alltoallv", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("in has {} floats (counts sum to {}), out has {} (counts sum "
                                                       "to {}){}",
                                                       in.size(), send_total, out.size(), recv_total,
                                                       negative ? ", negative count" : "")));
  }
  CUBOID_MPI_CHECK(MPI_Alltoallv(in.data(), send_counts.data(), send_displs.data(), MPI_FLOAT, out.data(),
                                 recv_counts.data(), recv_displs.data(), MPI_FLOAT, impl_->comm));
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm sub = MPI_COMM_NULL;
  CUBOID_MPI_CHECK(MPI_Comm_split(impl_->comm, color, key, &sub));
  CUBOID_MPI_CHECK(MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN));
  return std::make_unique<MpiCommunicator>(make_impl(sub, true));
}

void MpiCommunicator::abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

} // namespace cuboid::exec
