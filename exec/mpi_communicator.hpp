// MpiCommunicator: Communicator over an MPI communicator (built only with CUBOID_ENABLE_MPI). MPI handles stay in
// the .cpp (pimpl) so that headers never include mpi.h. Every failing MPI call throws DeviceError naming the call,
// the world rank and file:line.
#pragma once

#include "exec/communicator.hpp"

#include <memory>

namespace cuboid::exec {

class MpiCommunicator final : public Communicator {
public:
  struct Impl;
  explicit MpiCommunicator(std::unique_ptr<Impl> impl);
  ~MpiCommunicator() override;

  /// The world communicator (MPI must have been initialised by CommEnvironment).
  [[nodiscard]] static std::unique_ptr<MpiCommunicator> world();

  [[nodiscard]] int rank() const override;
  [[nodiscard]] int size() const override;
  [[nodiscard]] int world_rank() const override;
  void all_reduce(std::span<float> data, ReduceOp op) override;
  [[nodiscard]] std::unique_ptr<Request> all_reduce_async(std::span<float> data) override;
  void reduce_scatter(std::span<const float> in, std::span<float> out) override;
  void all_gather(std::span<const float> in, std::span<float> out) override;
  [[nodiscard]] std::unique_ptr<Request> send(std::span<const float> data, int peer, int tag) override;
  void recv(std::span<float> data, int peer, int tag) override;
  void send_doubles(std::span<const double> data, int peer, int tag) override;
  void recv_doubles(std::span<double> data, int peer, int tag) override;
  void barrier() override;
  void all_to_all_v(std::span<const float> in, std::span<const int> send_counts, std::span<float> out,
                    std::span<const int> recv_counts) override; // --- mixture of experts ---
  [[nodiscard]] std::unique_ptr<Communicator> split(int color, int key) override;
  void abort(int code) override;

private:
  std::unique_ptr<Impl> impl_;
};

} // namespace cuboid::exec
