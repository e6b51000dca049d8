// The "cpu" device and cluster for predictions of CPU runs (see cpu_device.hpp).
#include "model/cpu_device.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

namespace cuboid::model {

namespace {
// Used when sysconf cannot tell the physical memory (it always can on Linux).
constexpr double FALLBACK_MEMORY_BYTES = 8e9;

double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_bytes = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_bytes <= 0) {
    return FALLBACK_MEMORY_BYTES;
  }
  return static_cast<double>(pages) * static_cast<double>(page_bytes);
}
} // namespace

GpuSpec cpu_device(int ranks_per_machine) {
  GpuSpec gpu;
  gpu.name = "cpu";
  gpu.bf16_flops_per_s = CPU_REFERENCE_FLOPS_PER_S;
  gpu.fp16_flops_per_s = CPU_REFERENCE_FLOPS_PER_S;
  gpu.fp8_flops_per_s = 0.0;
  gpu.hbm_bytes = physical_memory_bytes() / std::max(1, ranks_per_machine);
  gpu.hbm_bw_bytes_per_s = CPU_REFERENCE_MEM_BW_BYTES_PER_S;
  gpu.nvlink_bw_bytes_per_s = CPU_REFERENCE_LINK_BW_BYTES_PER_S;
  gpu.source = "cuboid CPU backend: fixed reference rates (model/cpu_device.hpp); a CPU calibration profile scales them";
  return gpu;
}

ClusterSpec cpu_cluster(int world_size) {
  ClusterSpec cluster;
  cluster.name = "cpu";
  cluster.gpu = cpu_device(world_size);
  cluster.num_gpus = world_size;
  cluster.gpus_per_node = world_size;
  cluster.nvlink_bw_bytes_per_s = CPU_REFERENCE_LINK_BW_BYTES_PER_S;
  cluster.nic_bw_bytes_per_s = CPU_REFERENCE_LINK_BW_BYTES_PER_S;
  cluster.source = fmt::format("this machine, {} rank(s) of the CPU backend (MPI over shared memory)", world_size);
  cluster.assumptions.push_back("CPU run: rates come from the CPU calibration profile (fractions of the cpu device's "
                                "reference rates, exec/cpu_device.hpp)");
  return cluster;
}

} // namespace cuboid::model
