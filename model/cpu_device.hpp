// The CPU backend as the cost model sees it: a "device" named "cpu" with fixed reference rates (not this machine's
// peaks). A CPU calibration profile (exec::calibrate via `cuboid calibrate --backend cpu`) stores every measured rate
// as a fraction of these references, so CostModel(cpu_cluster(n), profile, plan) turns the fractions back into the
// measured rates without a per-machine device spec. `cuboid run --backend cpu` predicts its own run this way.
#pragma once

#include "model/gpu_spec.hpp"

namespace cuboid::model {

/// Name of the CPU backend's device in `--gpu` and in profiles (model::make_cluster("cpu", n) = cpu_cluster(n)).
constexpr const char* CPU_DEVICE_NAME = "cpu";

/// Reference rates of the "cpu" device. They are deliberately far above any CPU so that measured fractions stay in
/// (0, 1] (CostProfile requires it); e.g. 80 GFLOP/s measured = efficiency 0.008.
constexpr double CPU_REFERENCE_FLOPS_PER_S = 1e13;   // per rank, fp32 GEMM
constexpr double CPU_REFERENCE_MEM_BW_BYTES_PER_S = 1e12; // per rank, memory-bound ops (IR bytes, see calibration)
constexpr double CPU_REFERENCE_LINK_BW_BYTES_PER_S = 1e12; // per rank per direction, MPI over shared memory

/// The "cpu" device: reference rates above, memory = this machine's physical memory / ranks_per_machine.
GpuSpec cpu_device(int ranks_per_machine);
/// One machine running `world_size` ranks (one "node", so every collective uses the intra-node link class).
ClusterSpec cpu_cluster(int world_size);

} // namespace cuboid::model
