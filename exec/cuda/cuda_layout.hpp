// Host-side plumbing of the CUDA training runtime (no CUDA needed, so it is tested in every build): the device
// layout of a rank's flat parameter buffers (each tensor starts on a 256-byte boundary for cuBLASLt and vector
// loads), the DP gradient bucket ranges over that layout (same shares as the CPU runtime), and the checks of what
// `cuboid run --backend cuda` supports.
#pragma once

#include "exec/param_set.hpp"
#include "exec/runtime.hpp"

#include <cstddef>
#include <span>
#include <vector>

namespace cuboid::exec::cuda {

/// Tensor starts are multiples of this many elements: 128 fp32 = 512 bytes, 128 bf16 = 256 bytes (cuBLASLt's
/// default CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES is 256).
constexpr std::size_t PARAM_ALIGN_ELEMENTS = 128;

struct DeviceParamLayout {
  std::vector<std::size_t> offsets; // per ParamInfo, in elements
  std::size_t total = 0;            // elements of each flat buffer (values, grads, moments, bf16 copy)
};

/// Offsets in ParamInfo order, each rounded up to `align_elements` (> 0); total rounded up too.
[[nodiscard]] DeviceParamLayout device_param_layout(const std::vector<ParamInfo>& infos,
                                                    std::size_t align_elements = PARAM_ALIGN_ELEMENTS);

struct BucketRange {
  std::size_t begin = 0;
  std::size_t end = 0;
};

/// Bucket k covers the share weights[k] / sum(weights) of [0, total), as exec/runtime.cpp's setup_buckets (the
/// last bucket ends at total; ranges are contiguous, in order, possibly empty).
[[nodiscard]] std::vector<BucketRange> bucket_ranges(std::span<const double> weights, std::size_t total);

/// Throws InputError (location "command line") for what the CUDA runtime does not support yet: sequence
/// parallelism, fault injection, precision other than bf16.
void validate_cuda_run_options(const RunOptions& options);

} // namespace cuboid::exec::cuda
