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
/// last bucket ends at total; ranges are contiguous, in order, possibly empty). Inner boundaries are rounded to
/// multiples of `granule` (total must be one).
[[nodiscard]] std::vector<BucketRange> bucket_ranges(std::span<const double> weights, std::size_t total,
                                                     std::size_t granule = 1);

/// The distributed optimizer's partition of the flat buffers over the DP group (Megatron-Core's
/// distributed optimizer): every bucket is cut into segments (at `splits`: the tied word embedding gets segments
/// of its own, as Megatron-Core gives it its own bucket, so that the first and the last pipeline stage shard it alike
/// and its embedding-group all-reduce can follow the DP reduce-scatter); every segment into dp equal pieces, DP
/// rank r owning piece r. A segment is reduce-scattered and all-gathered in place, one collective each.
struct ShardSegment {
  std::size_t begin = 0; // in elements of the flat buffers; multiples of the granule
  std::size_t end = 0;   // (end - begin) / dp elements per DP rank
};
struct OwnedPiece {
  std::size_t begin = 0;        // in the flat buffers
  std::size_t size = 0;
  std::size_t shard_offset = 0; // into this rank's compact master / moment buffers
};
struct OptimizerShards {
  int dp = 1;
  int dp_rank = 0;
  std::vector<std::vector<ShardSegment>> segments; // per bucket, in order
  std::vector<OwnedPiece> owned;                   // this rank's pieces, one per segment, in buffer order
  std::vector<std::size_t> first_owned;            // per bucket: the index in `owned` of its first segment's piece
  std::size_t shard_total = 0;                     // sum of the owned sizes: total / dp
};

/// `buckets` with every inner boundary that falls inside `whole` moved to its end, so that one bucket holds all of it.
[[nodiscard]] std::vector<BucketRange> keep_whole(std::vector<BucketRange> buckets, BucketRange whole);

/// `buckets` with every inner boundary moved up to the next tensor start (`offsets`, ascending), so that no tensor
/// spans two buckets (ZeRO-2 keeps one gradient buffer per bucket).
[[nodiscard]] std::vector<BucketRange> snap_to_tensors(std::vector<BucketRange> buckets,
                                                       std::span<const std::size_t> offsets, std::size_t total);

/// Cuts `buckets` (contiguous from 0, boundaries multiples of dp) at the `splits` offsets (each a multiple of dp
/// inside [0, total]) and gives DP rank dp_rank its piece of each segment.
[[nodiscard]] OptimizerShards optimizer_shards(const std::vector<BucketRange>& buckets,
                                               std::span<const std::size_t> splits, int dp, int dp_rank);

/// Throws InputError (location "command line") for what the CUDA runtime does not support yet: precision other
/// than bf16, context parallelism, MoE models.
void validate_cuda_run_options(const RunOptions& options);

} // namespace cuboid::exec::cuda
