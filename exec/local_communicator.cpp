// LocalCommunicator: size-1 collectives are copies; messages to self wait in a per-tag queue.
#include "exec/local_communicator.hpp"

#include "exec/device_error.hpp"

#include <algorithm>
#include <fmt/format.h>

namespace cuboid::exec {

namespace {
class DoneRequest final : public Request {
public:
  void wait() override {}
};

void check_peer(int peer, const char* call) {
  if (peer != 0) {
    throw DeviceError(device_error_message(call, 0, __FILE__, __LINE__, fmt::format("peer {} out of range [0, 1)", peer)));
  }
}
} // namespace

void LocalCommunicator::all_reduce(std::span<float> /*data*/, ReduceOp /*op*/) {}

std::unique_ptr<Request> LocalCommunicator::all_reduce_async(std::span<float> /*data*/) {
  return std::make_unique<DoneRequest>();
}

void LocalCommunicator::reduce_scatter(std::span<const float> in, std::span<float> out) {
  if (in.size() != out.size()) {
    throw DeviceError(device_error_message("reduce_scatter", 0, __FILE__, __LINE__, "in.size() != out.size() * 1"));
  }
  std::copy(in.begin(), in.end(), out.begin());
}

void LocalCommunicator::all_gather(std::span<const float> in, std::span<float> out) {
  if (in.size() != out.size()) {
    throw DeviceError(device_error_message("all_gather", 0, __FILE__, __LINE__, "out.size() != in.size() * 1"));
  }
  std::copy(in.begin(), in.end(), out.begin());
}

std::unique_ptr<Request> LocalCommunicator::send(std::span<const float> data, int peer, int tag) {
  check_peer(peer, "send");
  pending_.emplace(tag, std::vector<float>(data.begin(), data.end()));
  return std::make_unique<DoneRequest>();
}

void LocalCommunicator::recv(std::span<float> data, int peer, int tag) {
  check_peer(peer, "recv");
  auto it = pending_.find(tag);
  if (it == pending_.end() || it->second.size() != data.size()) {
    throw DeviceError(device_error_message("recv", 0, __FILE__, __LINE__,
                                           fmt::format("no message of {} floats with tag {} (would deadlock)",
                                                       data.size(), tag)));
  }
  std::copy(it->second.begin(), it->second.end(), data.begin());
  pending_.erase(it);
}

void LocalCommunicator::send_doubles(std::span<const double> data, int peer, int tag) {
  check_peer(peer, "send_doubles");
  pending_doubles_.emplace(tag, std::vector<double>(data.begin(), data.end()));
}

void LocalCommunicator::recv_doubles(std::span<double> data, int peer, int tag) {
  check_peer(peer, "recv_doubles");
  auto it = pending_doubles_.find(tag);
  if (it == pending_doubles_.end() || it->second.size() != data.size()) {
    throw DeviceError(device_error_message("recv_doubles", 0, __FILE__, __LINE__,
                                           fmt::format("no message of {} doubles with tag {}", data.size(), tag)));
  }
  std::copy(it->second.begin(), it->second.end(), data.begin());
  pending_doubles_.erase(it);
}

std::unique_ptr<Communicator> LocalCommunicator::split(int /*color*/, int /*key*/) {
  return std::make_unique<LocalCommunicator>();
}

void LocalCommunicator::abort(int code) {
  throw DeviceError(fmt::format("abort({}) requested on a single-process run", code));
}

} // namespace cuboid::exec
