// NCCL implementation of the Communicator interface (see nccl_communicator.hpp for the stream and event protocol).
// NCCL has no message tags: point-to-point messages between two ranks match in issue order, which is the order
// the lowered per-rank programs use on both sides; tags are only checked to be non-negative.
#include "exec/cuda/nccl_communicator.hpp"

#include "exec/cuda/cuda_check.hpp"
#include "exec/cuda/rendezvous.hpp"
#include "exec/device_error.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

namespace cuboid::exec::cuda {

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  int rank = 0;
  int size = 1;
  int world_rank = 0;
  cudaStream_t compute = nullptr; // not owned
  cudaStream_t comm_stream = nullptr; // owned
  float* scratch = nullptr;           // one float for barrier()
  double* staging = nullptr;          // device staging of send_doubles / recv_doubles
  std::size_t staging_count = 0;

  Impl(ncclComm_t c, int world, cudaStream_t compute_stream) : comm(c), world_rank(world), compute(compute_stream) {
    NCCL_CHECK(ncclCommUserRank(comm, &rank));
    NCCL_CHECK(ncclCommCount(comm, &size));
    CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaMalloc(&scratch, sizeof(float)));
  }
  ~Impl() {
    // Destructors never throw: errors while tearing down are ignored (the job is ending anyway).
    if (staging != nullptr) cudaFree(staging);
    if (scratch != nullptr) cudaFree(scratch);
    if (comm_stream != nullptr) cudaStreamDestroy(comm_stream);
    if (comm != nullptr) ncclCommDestroy(comm);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  double* staging_for(std::size_t count) {
    if (count > staging_count) {
      if (staging != nullptr) {
        CUDA_CHECK(cudaFree(staging));
        staging = nullptr;
      }
      CUDA_CHECK(cudaMalloc(&staging, count * sizeof(double)));
      staging_count = count;
    }
    return staging;
  }
};

namespace {

// Completion of work on the communication stream; wait() orders the compute stream after it (no host sync).
class EventRequest final : public Request {
public:
  EventRequest(cudaEvent_t done, cudaStream_t waiter) : done_(done), waiter_(waiter) {}
  ~EventRequest() override {
    if (done_ != nullptr) {
      cudaStreamWaitEvent(waiter_, done_, 0); // never leave a buffer in flight unordered
      cudaEventDestroy(done_);
    }
  }
  EventRequest(const EventRequest&) = delete;
  EventRequest& operator=(const EventRequest&) = delete;
  void wait() override {
    if (done_ != nullptr) {
      CUDA_CHECK(cudaStreamWaitEvent(waiter_, done_, 0));
      CUDA_CHECK(cudaEventDestroy(done_));
      done_ = nullptr;
    }
  }

private:
  cudaEvent_t done_;
  cudaStream_t waiter_;
};

// Makes `comm_stream` wait for everything enqueued so far on `compute` (the producer of the buffer).
void hand_off(cudaStream_t compute, cudaStream_t comm_stream) {
  cudaEvent_t ready = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(ready, compute));
  CUDA_CHECK(cudaStreamWaitEvent(comm_stream, ready, 0));
  CUDA_CHECK(cudaEventDestroy(ready)); // legal: destruction is deferred until the event completes
}

std::unique_ptr<Request> completion(cudaStream_t comm_stream, cudaStream_t compute) {
  cudaEvent_t done = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(done, comm_stream));
  return std::make_unique<EventRequest>(done, compute);
}

void check_peer(int peer, int size, int tag, int world_rank) {
  if (peer < 0 || peer >= size || tag < 0) {
    throw DeviceError(device_error_message("NcclCommunicator p2p", world_rank, __FILE__, __LINE__,
                                           fmt::format("peer {} of {} or tag {} invalid", peer, size, tag)));
  }
}

} // namespace

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclCommunicator::~NcclCommunicator() = default;

std::unique_ptr<NcclCommunicator> NcclCommunicator::world(const LaunchEnv& env, cudaStream_t compute,
                                                          double rendezvous_timeout_s) {
  ncclUniqueId id{};
  if (env.rank == 0) {
    NCCL_CHECK(ncclGetUniqueId(&id));
  }
  const auto bytes = tcp_broadcast(
      env, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(&id), sizeof(id)), rendezvous_timeout_s);
  if (bytes.size() != sizeof(id)) {
    throw DeviceError(device_error_message("NcclCommunicator::world", env.rank, __FILE__, __LINE__,
                                           fmt::format("rendezvous returned {} bytes, expected {}", bytes.size(),
                                                       sizeof(id))));
  }
  std::memcpy(&id, bytes.data(), sizeof(id));
  ncclComm_t comm = nullptr;
  NCCL_CHECK(ncclCommInitRank(&comm, env.world_size, id, env.rank));
  return std::make_unique<NcclCommunicator>(std::make_unique<Impl>(comm, env.rank, compute));
}

std::vector<std::unique_ptr<NcclCommunicator>> NcclCommunicator::init_all(std::span<const int> devices,
                                                                          std::span<const cudaStream_t> streams) {
  std::vector<ncclComm_t> comms(devices.size());
  NCCL_CHECK(ncclCommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data()));
  std::vector<std::unique_ptr<NcclCommunicator>> out;
  for (std::size_t idx = 0; idx < devices.size(); ++idx) {
    CUDA_CHECK(cudaSetDevice(devices[idx]));
    out.push_back(std::make_unique<NcclCommunicator>(
        std::make_unique<Impl>(comms[idx], static_cast<int>(idx), streams[idx])));
  }
  return out;
}

int NcclCommunicator::rank() const { return impl_->rank; }
int NcclCommunicator::size() const { return impl_->size; }
int NcclCommunicator::world_rank() const { return impl_->world_rank; }
cudaStream_t NcclCommunicator::compute_stream() const { return impl_->compute; }
cudaStream_t NcclCommunicator::comm_stream() const { return impl_->comm_stream; }

void NcclCommunicator::all_reduce(std::span<float> data, ReduceOp op) {
  NCCL_CHECK(ncclAllReduce(data.data(), data.data(), data.size(), ncclFloat, op == ReduceOp::Sum ? ncclSum : ncclMax,
                           impl_->comm, impl_->compute));
}

std::unique_ptr<Request> NcclCommunicator::all_reduce_async(std::span<float> data) {
  hand_off(impl_->compute, impl_->comm_stream);
  NCCL_CHECK(ncclAllReduce(data.data(), data.data(), data.size(), ncclFloat, ncclSum, impl_->comm,
                           impl_->comm_stream));
  return completion(impl_->comm_stream, impl_->compute);
}

void NcclCommunicator::reduce_scatter(std::span<const float> in, std::span<float> out) {
  if (out.size() * static_cast<std::size_t>(impl_->size) != in.size()) {
    throw DeviceError(device_error_message("NcclCommunicator::reduce_scatter", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("in {} != out {} * size {}", in.size(), out.size(),
                                                       impl_->size)));
  }
  NCCL_CHECK(ncclReduceScatter(in.data(), out.data(), out.size(), ncclFloat, ncclSum, impl_->comm, impl_->compute));
}

// In place as NCCL defines it: recvbuff == sendbuff + rank * recvcount (reduce-scatter), sendbuff == recvbuff +
// rank * sendcount (all-gather).
std::unique_ptr<Request> NcclCommunicator::reduce_scatter_in_place_async(std::span<float> data) {
  const std::size_t block = equal_block(*this, data.size(), "NcclCommunicator::reduce_scatter_in_place_async");
  hand_off(impl_->compute, impl_->comm_stream);
  NCCL_CHECK(ncclReduceScatter(data.data(), data.data() + static_cast<std::size_t>(impl_->rank) * block, block,
                               ncclFloat, ncclSum, impl_->comm, impl_->comm_stream));
  return completion(impl_->comm_stream, impl_->compute);
}

void NcclCommunicator::all_gather_in_place(std::span<float> data) {
  const std::size_t block = equal_block(*this, data.size(), "NcclCommunicator::all_gather_in_place");
  NCCL_CHECK(ncclAllGather(data.data() + static_cast<std::size_t>(impl_->rank) * block, data.data(), block, ncclFloat,
                           impl_->comm, impl_->compute));
}

std::unique_ptr<Request> NcclCommunicator::all_gather_in_place_async(std::span<float> data) {
  const std::size_t block = equal_block(*this, data.size(), "NcclCommunicator::all_gather_in_place_async");
  hand_off(impl_->compute, impl_->comm_stream);
  NCCL_CHECK(ncclAllGather(data.data() + static_cast<std::size_t>(impl_->rank) * block, data.data(), block, ncclFloat,
                           impl_->comm, impl_->comm_stream));
  return completion(impl_->comm_stream, impl_->compute);
}

void NcclCommunicator::all_gather(std::span<const float> in, std::span<float> out) {
  if (in.size() * static_cast<std::size_t>(impl_->size) != out.size()) {
    throw DeviceError(device_error_message("NcclCommunicator::all_gather", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("out {} != in {} * size {}", out.size(), in.size(),
                                                       impl_->size)));
  }
  NCCL_CHECK(ncclAllGather(in.data(), out.data(), in.size(), ncclFloat, impl_->comm, impl_->compute));
}

std::unique_ptr<Request> NcclCommunicator::send(std::span<const float> data, int peer, int tag) {
  check_peer(peer, impl_->size, tag, impl_->world_rank);
  hand_off(impl_->compute, impl_->comm_stream);
  NCCL_CHECK(ncclSend(data.data(), data.size(), ncclFloat, peer, impl_->comm, impl_->comm_stream));
  return completion(impl_->comm_stream, impl_->compute);
}

void NcclCommunicator::recv(std::span<float> data, int peer, int tag) {
  check_peer(peer, impl_->size, tag, impl_->world_rank);
  NCCL_CHECK(ncclRecv(data.data(), data.size(), ncclFloat, peer, impl_->comm, impl_->compute));
}

void NcclCommunicator::all_to_all_v(std::span<const float> in, std::span<const int> send_counts, std::span<float> out,
                                    std::span<const int> recv_counts) {
  const auto members = static_cast<std::size_t>(impl_->size);
  const auto offsets = [&](std::span<const int> counts, std::size_t total, const char* what) {
    std::vector<std::size_t> at(members + 1, 0);
    bool valid = counts.size() == members;
    for (std::size_t peer = 0; valid && peer < members; ++peer) {
      valid = counts[peer] >= 0;
      at[peer + 1] = at[peer] + (valid ? static_cast<std::size_t>(counts[peer]) : 0);
    }
    if (!valid || at[members] != total) {
      throw DeviceError(device_error_message("NcclCommunicator::all_to_all_v", impl_->world_rank, __FILE__, __LINE__,
                                             fmt::format("{} {} counts for {} members, {} floats (one non-negative "
                                                         "count per member summing to the buffer expected)",
                                                         counts.size(), what, members, total)));
    }
    return at;
  };
  const std::vector<std::size_t> send_at = offsets(send_counts, in.size(), "send");
  const std::vector<std::size_t> recv_at = offsets(recv_counts, out.size(), "recv");
  const auto me = static_cast<std::size_t>(impl_->rank);
  if (send_counts[me] != recv_counts[me]) {
    throw DeviceError(device_error_message("NcclCommunicator::all_to_all_v", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("sends {} floats to itself but expects {}", send_counts[me],
                                                       recv_counts[me])));
  }
  if (send_counts[me] > 0) {
    CUDA_CHECK(cudaMemcpyAsync(out.data() + recv_at[me], in.data() + send_at[me],
                               static_cast<std::size_t>(send_counts[me]) * sizeof(float), cudaMemcpyDeviceToDevice,
                               impl_->compute));
  }
  NCCL_CHECK(ncclGroupStart());
  for (std::size_t peer = 0; peer < members; ++peer) {
    if (peer == me) {
      continue;
    }
    if (send_counts[peer] > 0) {
      NCCL_CHECK(ncclSend(in.data() + send_at[peer], static_cast<std::size_t>(send_counts[peer]), ncclFloat,
                          static_cast<int>(peer), impl_->comm, impl_->compute));
    }
    if (recv_counts[peer] > 0) {
      NCCL_CHECK(ncclRecv(out.data() + recv_at[peer], static_cast<std::size_t>(recv_counts[peer]), ncclFloat,
                          static_cast<int>(peer), impl_->comm, impl_->compute));
    }
  }
  NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::send_doubles(std::span<const double> data, int peer, int tag) {
  check_peer(peer, impl_->size, tag, impl_->world_rank);
  if (data.empty()) {
    return;
  }
  double* dev = impl_->staging_for(data.size());
  CUDA_CHECK(cudaMemcpyAsync(dev, data.data(), data.size_bytes(), cudaMemcpyHostToDevice, impl_->compute));
  NCCL_CHECK(ncclSend(dev, data.size(), ncclDouble, peer, impl_->comm, impl_->compute));
  CUDA_CHECK(cudaStreamSynchronize(impl_->compute));
}

void NcclCommunicator::recv_doubles(std::span<double> data, int peer, int tag) {
  check_peer(peer, impl_->size, tag, impl_->world_rank);
  if (data.empty()) {
    return;
  }
  double* dev = impl_->staging_for(data.size());
  NCCL_CHECK(ncclRecv(dev, data.size(), ncclDouble, peer, impl_->comm, impl_->compute));
  CUDA_CHECK(cudaMemcpyAsync(data.data(), dev, data.size_bytes(), cudaMemcpyDeviceToHost, impl_->compute));
  CUDA_CHECK(cudaStreamSynchronize(impl_->compute));
}

void NcclCommunicator::barrier() {
  NCCL_CHECK(ncclAllReduce(impl_->scratch, impl_->scratch, 1, ncclFloat, ncclSum, impl_->comm, impl_->compute));
  CUDA_CHECK(cudaStreamSynchronize(impl_->compute));
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  ncclComm_t sub = nullptr;
  NCCL_CHECK(ncclCommSplit(impl_->comm, color, key, &sub, nullptr));
  return std::make_unique<NcclCommunicator>(std::make_unique<Impl>(sub, impl_->world_rank, impl_->compute));
}

void NcclCommunicator::abort(int code) {
  if (impl_->size == 1) {
    throw DeviceError(device_error_message("NcclCommunicator::abort", impl_->world_rank, __FILE__, __LINE__,
                                           fmt::format("abort({}) of a single-rank job", code)));
  }
  ncclCommAbort(impl_->comm);
  impl_->comm = nullptr;
  std::_Exit(code); // the interface contract: never returns for multi-process backends (as MPI_Abort)
}

} // namespace cuboid::exec::cuda
