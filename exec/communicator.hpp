// Communicator: the collective and point-to-point interface the CPU runtime uses for TP, DP and PP traffic.
// Implementations: LocalCommunicator (one rank, copies) and MpiCommunicator (mpi_communicator.hpp, built only with
// CUBOID_ENABLE_MPI). All buffers are fp32 and owned by the caller; every member of a communicator must call a
// collective in the same order with the same sizes (as MPI requires).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

namespace cuboid::exec {

enum class ReduceOp { Sum, Max };

/// A pending non-blocking operation. wait() must be called before the buffer is reused or destroyed; the
/// destructor of a request that was never waited on waits (never leaves MPI with a dangling buffer).
class Request {
public:
  virtual ~Request() = default;
  virtual void wait() = 0;
};

class Communicator {
public:
  virtual ~Communicator() = default;
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  [[nodiscard]] virtual int rank() const = 0;
  [[nodiscard]] virtual int size() const = 0;
  /// Rank of this process in the world communicator (for error messages).
  [[nodiscard]] virtual int world_rank() const = 0;

  /// In-place reduction over all members. Sum results are bit-identical on every member and do not depend on
  /// timing (same sizes, same order of summation on every run).
  virtual void all_reduce(std::span<float> data, ReduceOp op = ReduceOp::Sum) = 0;
  /// Non-blocking in-place sum (DP gradient buckets); `data` must stay alive and untouched until wait().
  [[nodiscard]] virtual std::unique_ptr<Request> all_reduce_async(std::span<float> data) = 0;
  /// out.size() * size() == in.size(): member r receives the sum of block r of every member's `in`.
  virtual void reduce_scatter(std::span<const float> in, std::span<float> out) = 0;
  /// out.size() == in.size() * size(): block r of `out` is member r's `in`.
  virtual void all_gather(std::span<const float> in, std::span<float> out) = 0;
  /// The distributed optimizer's pair, in place on a buffer of size() equal blocks. Reduce-scatter: block r of
  /// member r's `data` receives the sum of every member's block r (its other blocks keep undefined values); it may
  /// run behind the caller like all_reduce_async (`data` untouched until wait()). All-gather: every member's `data`
  /// receives member r's block r in block r; its async form is Megatron's --overlap-param-gather (`data` not read
  /// before wait()). The defaults copy through reduce_scatter / all_gather (host memory) and complete at once;
  /// NcclCommunicator runs them in place on the device.
  [[nodiscard]] virtual std::unique_ptr<Request> reduce_scatter_in_place_async(std::span<float> data);
  virtual void all_gather_in_place(std::span<float> data);
  [[nodiscard]] virtual std::unique_ptr<Request> all_gather_in_place_async(std::span<float> data);

  /// Non-blocking tagged send; `data` must stay alive until the request has been waited on.
  [[nodiscard]] virtual std::unique_ptr<Request> send(std::span<const float> data, int peer, int tag) = 0;
  /// Blocking tagged receive of exactly data.size() floats.
  virtual void recv(std::span<float> data, int peer, int tag) = 0;
  /// Blocking send/receive of a double buffer (timings, losses) to or from rank `peer`.
  virtual void send_doubles(std::span<const double> data, int peer, int tag) = 0;
  virtual void recv_doubles(std::span<double> data, int peer, int tag) = 0;
  virtual void barrier() = 0;

  /// --- mixture of experts --- All-to-all with per-peer counts (MPI_Alltoallv), for MoE token dispatch / combine
  /// over the EP group. send_counts[p] floats of `in` (blocks in peer order) go to member p; recv_counts[p] floats
  /// from member p land in `out` (blocks in peer order). Both count lists have size() entries, in.size() ==
  /// sum(send_counts), out.size() == sum(recv_counts), and recv_counts[p] on this member must equal send_counts[me]
  /// on member p. Collective. The default is pairwise tagged send/recv (any backend); MpiCommunicator overrides it.
  virtual void all_to_all_v(std::span<const float> in, std::span<const int> send_counts, std::span<float> out,
                            std::span<const int> recv_counts);

  /// Splits into sub-communicators: members with the same `color` form one group, ordered by `key`
  /// (MPI_Comm_split). Collective over all members.
  [[nodiscard]] virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  /// Ends the whole job with `code` (MPI_Abort on the world). Never returns for multi-process backends; the
  /// local backend throws DeviceError instead so that single-process callers keep control.
  virtual void abort(int code) = 0;
};

/// Elements per member of a buffer of comm.size() equal blocks (the in-place collectives); DeviceError naming `what`
/// when `elements` does not divide.
[[nodiscard]] std::size_t equal_block(const Communicator& comm, std::size_t elements, const char* what);

/// Gathers a variable-length double vector from every member to member 0 (empty on other members); used for
/// timings. Collective.
std::vector<std::vector<double>> gather_doubles(Communicator& comm, std::span<const double> data);

} // namespace cuboid::exec
