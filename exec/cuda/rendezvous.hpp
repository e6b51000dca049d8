// Rendezvous without MPI: rank 0 broadcasts a small payload (the 128-byte ncclUniqueId) to every rank of a job
// launched torchrun-style (launch_env.hpp). Two transports:
//   - TCP: rank 0 listens on MASTER_PORT (all interfaces); the others connect to MASTER_ADDR:MASTER_PORT, retrying
//     until rank 0 is up, send (magic, rank, world size), receive the payload, and acknowledge it, so the call also
//     acts as a barrier and rank 0 checks that every rank 1..n-1 arrived exactly once.
//   - shared file (a file system every rank sees): rank 0 writes `path` atomically (tmp + rename); the others poll
//     for it and then write `path.ack.<rank>`; rank 0 removes all of them once everyone has acknowledged. The path
//     must be fresh for each job: rank 0 refuses an existing file (left by a crashed job).
// Failures (timeout, wrong world size, duplicate rank, I/O errors) throw DeviceError naming the rank and the peer.
#pragma once

#include "exec/cuda/launch_env.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cuboid::exec::cuda {

/// Collective over all `env.world_size` processes. `payload` is read on rank 0 only (at most 1 MiB); the return
/// value is rank 0's payload on every rank. world_size 1 returns `payload` without any I/O.
std::vector<std::uint8_t> tcp_broadcast(const LaunchEnv& env, std::span<const std::uint8_t> payload, double timeout_s);

/// Same contract over a shared file at `path`.
std::vector<std::uint8_t> file_broadcast(const std::string& path, int rank, int world_size,
                                         std::span<const std::uint8_t> payload, double timeout_s);

} // namespace cuboid::exec::cuda
