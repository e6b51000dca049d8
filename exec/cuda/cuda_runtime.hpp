// CUDA training runtime: `cuboid run --backend cuda`. Executes the same per-rank Program as the CPU runtime
// (exec/runtime.hpp: lowered from the step's TaskGraph by exec/lowering.hpp, or the internal schedule) with
// CudaGptModel (cuda_model.hpp) on this process's GPU: NCCL world from the launch environment (torchrun / mpirun /
// single process, launch_env.hpp), TP / DP / PP groups split from it (exec/process_groups.hpp), pipeline
// send / recv of bf16 activations (forward over the world communicator, backward over a copy of it: NCCL matches
// point-to-point in issue order), DP gradient buckets all-reduced on the communication stream between
// CollectiveStart and CollectiveWait (so they overlap the rest of backward), AdamW on the device with the bf16
// weight copy refreshed by the same kernel. The distributed optimizer and ZeRO-2/3 shard over DP as
// cuda_model.hpp describes (reduce-scatter instead of all-reduce, owned pieces updated, bf16 copy all-gathered
// after the step or, ZeRO-3, per unit); zero-bubble schedules run their deferred W. Per-task timing with CUDA events
// (event_timeline.hpp) in the measured-trace format: compute tasks on the compute stream, a DP bucket from the
// moment its gradients are ready (compute stream) to the end of its all-reduce (communication stream).
#pragma once

#include "exec/runtime.hpp"

#include <string>
#include <vector>

namespace cuboid::exec::cuda {

struct CudaRunResult {
  RunResult run;             // as exec::run_training (losses, step times, timeline of the last step on rank 0)
  bool is_root = true;       // world rank 0: prints and writes
  int world_size = 1;
  std::string launcher;      // "single process", "torchrun", "mpirun"
  std::string device;        // cudaDeviceProp::name of this rank's GPU
  double peak_reserved_bytes = 0.0; // high-water mark of the device memory pool on rank 0 (weights + activations)
  std::vector<double> peak_reserved_bytes_per_rank; // the same of every world rank, on rank 0 (empty elsewhere)
  std::string attention_kernel;      // which attention kernels the layers used (CudaGptModel::attention_kernel)
};

/// Trains options.steps steps on the GPUs of the launch (one per process, device = LOCAL_RANK). Throws InputError
/// for unsupported options (validate_cuda_run_options, validate_run_options), DeviceError when no GPU is usable or a
/// CUDA / cuBLAS / NCCL call fails, RunError (with rank, step, task) for a non-finite loss.
CudaRunResult run_training_cuda(const RunOptions& options);

} // namespace cuboid::exec::cuda
