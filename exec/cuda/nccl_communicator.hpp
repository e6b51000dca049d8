// NcclCommunicator: exec::Communicator over NCCL for the CUDA backend. All float spans are DEVICE memory; the
// double spans of send_doubles / recv_doubles are host memory (timings, losses). "Blocking" operations are
// stream-ordered on the compute stream (no host wait) except barrier() and the double transfers, which synchronise
// the host. all_reduce_async and the in-place async pair run on a separate communication stream: an event
// recorded on the compute stream makes them start after the gradients are produced, and Request::wait() makes the
// compute stream wait for their completion event, so DP gradient reduction overlaps the rest of backward without a
// host sync (as karpathy/llm.c llmc/zero.cuh hands off to its comm stream). send() also runs on the communication
// stream so that two pipeline stages that send to each other before receiving do not deadlock; recv() runs on the
// compute stream.
// The world is created from a LaunchEnv (rank 0 makes the ncclUniqueId and the TCP rendezvous broadcasts it);
// TP / DP / PP groups are split from it by ncclCommSplit (NCCL >= 2.18). NCCL handles stay in the .cpp (pimpl).
#pragma once

#include "exec/communicator.hpp"
#include "exec/cuda/launch_env.hpp"

#include <cuda_runtime_api.h>

#include <memory>
#include <span>
#include <vector>

namespace cuboid::exec::cuda {

class NcclCommunicator final : public Communicator {
public:
  struct Impl;
  explicit NcclCommunicator(std::unique_ptr<Impl> impl);
  ~NcclCommunicator() override;

  /// World communicator of a torchrun-style job. The caller has selected the device (cudaSetDevice(local_rank)).
  /// `compute` is the stream the blocking operations are ordered on. Collective over env.world_size processes.
  [[nodiscard]] static std::unique_ptr<NcclCommunicator> world(const LaunchEnv& env, cudaStream_t compute,
                                                               double rendezvous_timeout_s);
  /// One communicator per device of this process (ncclCommInitAll), for single-process multi-GPU tests; each uses
  /// the given stream of its device.
  [[nodiscard]] static std::vector<std::unique_ptr<NcclCommunicator>> init_all(std::span<const int> devices,
                                                                               std::span<const cudaStream_t> streams);

  [[nodiscard]] int rank() const override;
  [[nodiscard]] int size() const override;
  [[nodiscard]] int world_rank() const override;
  void all_reduce(std::span<float> data, ReduceOp op) override;
  [[nodiscard]] std::unique_ptr<Request> all_reduce_async(std::span<float> data) override;
  void reduce_scatter(std::span<const float> in, std::span<float> out) override;
  void all_gather(std::span<const float> in, std::span<float> out) override;
  [[nodiscard]] std::unique_ptr<Request> reduce_scatter_in_place_async(std::span<float> data) override;
  void all_gather_in_place(std::span<float> data) override;
  [[nodiscard]] std::unique_ptr<Request> all_gather_in_place_async(std::span<float> data) override;
  [[nodiscard]] std::unique_ptr<Request> send(std::span<const float> data, int peer, int tag) override;
  void recv(std::span<float> data, int peer, int tag) override;
  /// One NCCL group of ncclSend / ncclRecv per peer on the compute stream (NCCL's all-to-all recipe), this member's
  /// own block copied on the device; stream-ordered like the other blocking collectives.
  void all_to_all_v(std::span<const float> in, std::span<const int> send_counts, std::span<float> out,
                    std::span<const int> recv_counts) override;
  void send_doubles(std::span<const double> data, int peer, int tag) override;
  void recv_doubles(std::span<double> data, int peer, int tag) override;
  void barrier() override;
  [[nodiscard]] std::unique_ptr<Communicator> split(int color, int key) override;
  /// ncclCommAbort, then ends the process with `code` (std::_Exit, like MPI_Abort: the other ranks' NCCL calls
  /// fail and their watchdogs end them). With one rank it throws DeviceError instead, as LocalCommunicator.
  void abort(int code) override;

  [[nodiscard]] cudaStream_t compute_stream() const;
  [[nodiscard]] cudaStream_t comm_stream() const;

private:
  std::unique_ptr<Impl> impl_;
};

} // namespace cuboid::exec::cuda
