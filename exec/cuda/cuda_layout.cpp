// Device parameter layout, DP bucket ranges and the CUDA runtime's option checks (see cuda_layout.hpp).
#include "exec/cuda/cuda_layout.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace cuboid::exec::cuda {

namespace {
std::size_t round_up(std::size_t value, std::size_t align) { return (value + align - 1) / align * align; }
} // namespace

DeviceParamLayout device_param_layout(const std::vector<ParamInfo>& infos, std::size_t align_elements) {
  CUBOID_ASSERT(align_elements > 0, "device_param_layout: alignment must be positive");
  DeviceParamLayout layout;
  for (const ParamInfo& info : infos) {
    layout.offsets.push_back(layout.total);
    layout.total = round_up(layout.total + info.size(), align_elements);
  }
  return layout;
}

std::vector<BucketRange> bucket_ranges(std::span<const double> weights, std::size_t total, std::size_t granule) {
  CUBOID_ASSERT(granule > 0 && total % granule == 0, "bucket_ranges: total {} is not a multiple of {}", total,
                granule);
  std::vector<BucketRange> out;
  double sum = 0.0;
  for (const double w : weights) {
    sum += w;
  }
  double acc = 0.0;
  std::size_t begin = 0;
  for (std::size_t k = 0; k < weights.size(); ++k) {
    acc += weights[k];
    const std::size_t end =
        k + 1 == weights.size()
            ? total
            : std::min(total, round_up(static_cast<std::size_t>(std::llround(acc / sum * static_cast<double>(total))),
                                       granule));
    out.push_back({begin, std::max(begin, end)});
    begin = std::max(begin, end);
  }
  return out;
}

std::vector<BucketRange> keep_whole(std::vector<BucketRange> buckets, BucketRange whole) {
  for (std::size_t k = 0; k + 1 < buckets.size(); ++k) {
    std::size_t boundary = buckets[k].end;
    if (boundary > whole.begin && boundary < whole.end) {
      boundary = whole.end;
    }
    buckets[k].end = boundary;
    buckets[k + 1].begin = boundary;
    buckets[k + 1].end = std::max(buckets[k + 1].end, boundary);
  }
  return buckets;
}

std::vector<BucketRange> snap_to_tensors(std::vector<BucketRange> buckets, std::span<const std::size_t> offsets,
                                         std::size_t total) {
  for (std::size_t k = 0; k + 1 < buckets.size(); ++k) {
    const auto next = std::lower_bound(offsets.begin(), offsets.end(), buckets[k].end);
    const std::size_t boundary = std::max(buckets[k].begin, next == offsets.end() ? total : *next);
    buckets[k].end = boundary;
    buckets[k + 1].begin = boundary;
    buckets[k + 1].end = std::max(buckets[k + 1].end, boundary);
  }
  return buckets;
}

OptimizerShards optimizer_shards(const std::vector<BucketRange>& buckets, std::span<const std::size_t> splits, int dp,
                                 int dp_rank) {
  CUBOID_ASSERT(dp >= 1 && dp_rank >= 0 && dp_rank < dp, "optimizer_shards: DP rank {} of {}", dp_rank, dp);
  const auto n = static_cast<std::size_t>(dp);
  OptimizerShards out;
  out.dp = dp;
  out.dp_rank = dp_rank;
  for (const BucketRange& bucket : buckets) {
    CUBOID_ASSERT(bucket.begin % n == 0 && bucket.end % n == 0, "optimizer_shards: bucket [{}, {}) not a multiple "
                  "of dp {}", bucket.begin, bucket.end, dp);
    std::vector<std::size_t> cuts{bucket.begin};
    for (const std::size_t at : splits) {
      CUBOID_ASSERT(at % n == 0, "optimizer_shards: split {} not a multiple of dp {}", at, dp);
      if (at > bucket.begin && at < bucket.end) {
        cuts.push_back(at);
      }
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.push_back(bucket.end);
    std::vector<ShardSegment>& segments = out.segments.emplace_back();
    out.first_owned.push_back(out.owned.size());
    for (std::size_t c = 0; c + 1 < cuts.size(); ++c) {
      if (cuts[c + 1] == cuts[c]) {
        continue;
      }
      ShardSegment segment{cuts[c], cuts[c + 1]};
      const std::size_t piece = (segment.end - segment.begin) / n;
      segments.push_back(segment);
      out.owned.push_back({segment.begin + static_cast<std::size_t>(dp_rank) * piece, piece, out.shard_total});
      out.shard_total += piece;
    }
  }
  return out;
}

void validate_cuda_run_options(const RunOptions& options) {
  constexpr const char* WHERE = "command line";
  if (options.plan.precision != model::Precision::Bf16) {
    throw InputError(input_message(WHERE, "--precision",
                                   fmt::format("'{}' is not supported by --backend cuda (valid: bf16)",
                                               model::to_string(options.plan.precision))));
  }
  validate_context_parallel_run(options.plan);
  // Of the beyond-3D plans (issue 10), mixture of experts runs on --backend cpu only so far.
  if (options.model.is_moe()) { // --- mixture of experts ---
    throw InputError(input_message(WHERE, "--model",
                                   fmt::format("{} is a mixture-of-experts model: not supported by --backend cuda "
                                               "yet (valid: a dense model; MoE models run on --backend cpu)",
                                               options.model.name)));
  }
}

} // namespace cuboid::exec::cuda
