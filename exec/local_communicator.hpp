// LocalCommunicator: a communicator of size 1 (single-process runs, unit tests, reference runs). Collectives are
// copies; send/recv to itself are buffered by tag.
#pragma once

#include "exec/communicator.hpp"

#include <map>
#include <utility>
#include <vector>

namespace cuboid::exec {

class LocalCommunicator final : public Communicator {
public:
  [[nodiscard]] int rank() const override { return 0; }
  [[nodiscard]] int size() const override { return 1; }
  [[nodiscard]] int world_rank() const override { return 0; }
  void all_reduce(std::span<float> data, ReduceOp op) override;
  [[nodiscard]] std::unique_ptr<Request> all_reduce_async(std::span<float> data) override;
  void reduce_scatter(std::span<const float> in, std::span<float> out) override;
  void all_gather(std::span<const float> in, std::span<float> out) override;
  [[nodiscard]] std::unique_ptr<Request> send(std::span<const float> data, int peer, int tag) override;
  void recv(std::span<float> data, int peer, int tag) override;
  void send_doubles(std::span<const double> data, int peer, int tag) override;
  void recv_doubles(std::span<double> data, int peer, int tag) override;
  void barrier() override {}
  [[nodiscard]] std::unique_ptr<Communicator> split(int color, int key) override;
  void abort(int code) override;

private:
  std::multimap<int, std::vector<float>> pending_;         // tag -> message sent to self
  std::multimap<int, std::vector<double>> pending_doubles_;
};

} // namespace cuboid::exec
