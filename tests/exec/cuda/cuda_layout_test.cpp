// Host-side plumbing of the CUDA training runtime (exec/cuda/cuda_layout.hpp), tested without a GPU: aligned device
// offsets of a real model's parameter list, DP bucket ranges (the CPU runtime's shares), and the InputErrors for what
// --backend cuda does not support.
#include "exec/cuda/cuda_layout.hpp"
#include "exec/gpt_model.hpp"
#include "model/errors.hpp"
#include "model/model_catalog.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

using namespace cuboid;
using exec::cuda::bucket_ranges;
using exec::cuda::device_param_layout;

TEST_CASE("device_param_layout aligns every tensor and keeps ParamInfo order", "[exec][cuda]") {
  const model::ModelSpec spec = model::find_model("llama-tiny"); // F = 352 and norms of 128: not all multiples of 128
  model::Plan plan;
  plan.tp = 2;
  plan.micro_batch_size = 1;
  plan.global_batch_size = 1;
  const exec::GptModel layout(spec, plan, 1, 0, 0, false);
  const auto& infos = layout.params().infos();
  const auto device = device_param_layout(infos);
  REQUIRE(device.offsets.size() == infos.size());
  std::size_t unpadded = 0;
  for (std::size_t idx = 0; idx < infos.size(); ++idx) {
    CHECK(device.offsets[idx] % exec::cuda::PARAM_ALIGN_ELEMENTS == 0);
    if (idx + 1 < infos.size()) {
      CHECK(device.offsets[idx + 1] >= device.offsets[idx] + infos[idx].size()); // no overlap
      CHECK(device.offsets[idx + 1] - device.offsets[idx] < infos[idx].size() + exec::cuda::PARAM_ALIGN_ELEMENTS);
    }
    unpadded += infos[idx].size();
  }
  CHECK(device.total % exec::cuda::PARAM_ALIGN_ELEMENTS == 0);
  CHECK(device.total >= unpadded);
  CHECK(device.total < unpadded + infos.size() * exec::cuda::PARAM_ALIGN_ELEMENTS);
  // Alignment 1 is the CPU ParamSet layout.
  const auto packed = device_param_layout(infos, 1);
  for (std::size_t idx = 0; idx < infos.size(); ++idx) {
    CHECK(packed.offsets[idx] == infos[idx].offset);
  }
  CHECK(packed.total == unpadded);
}

TEST_CASE("bucket_ranges splits [0, total) by the bucket weights", "[exec][cuda]") {
  const std::vector<double> weights{1.0, 2.0, 1.0};
  const auto ranges = bucket_ranges(weights, 1000);
  REQUIRE(ranges.size() == 3);
  CHECK(ranges[0].begin == 0);
  CHECK(ranges[0].end == 250);
  CHECK(ranges[1].begin == 250);
  CHECK(ranges[1].end == 750);
  CHECK(ranges[2].begin == 750);
  CHECK(ranges[2].end == 1000);
  CHECK(bucket_ranges({}, 1000).empty());
  const auto one = bucket_ranges(std::vector<double>{3.0}, 17);
  REQUIRE(one.size() == 1);
  CHECK(one[0].end == 17);
  // With a granule every inner boundary is rounded up to a multiple of it (the distributed optimizer's pieces).
  const auto coarse = bucket_ranges(weights, 1024, 128);
  REQUIRE(coarse.size() == 3);
  CHECK(coarse[0].end == 256);
  CHECK(coarse[1].begin == 256);
  CHECK(coarse[1].end == 768);
  CHECK(coarse[2].end == 1024);
  const auto skewed = bucket_ranges(std::vector<double>{1.0, 100.0}, 1024, 128);
  CHECK(skewed[0].end == 128); // 10 rounded up, never to an empty first bucket of a non-zero weight
}

TEST_CASE("keep_whole moves bucket boundaries out of a tensor", "[exec][cuda]") {
  const std::vector<exec::cuda::BucketRange> buckets{{0, 100}, {100, 200}, {200, 300}, {300, 400}};
  const auto moved = exec::cuda::keep_whole(buckets, {50, 250});
  REQUIRE(moved.size() == 4);
  CHECK(moved[0].end == 250);
  CHECK(moved[1].begin == 250);
  CHECK(moved[1].end == 250); // emptied
  CHECK(moved[2].begin == 250);
  CHECK(moved[2].end == 300);
  CHECK(moved[3].begin == 300);
  const auto same = exec::cuda::keep_whole(buckets, {100, 200}); // already on boundaries
  CHECK(same[0].end == 100);
  CHECK(same[1].end == 200);
}

TEST_CASE("snap_to_tensors keeps every tensor inside one bucket", "[exec][cuda]") {
  const std::vector<exec::cuda::BucketRange> buckets{{0, 300}, {300, 600}, {600, 1000}};
  const std::vector<std::size_t> offsets{0, 256, 512, 640, 896};
  const auto snapped = exec::cuda::snap_to_tensors(buckets, offsets, 1000);
  CHECK(snapped[0].end == 512);
  CHECK(snapped[1].begin == 512);
  CHECK(snapped[1].end == 640);
  CHECK(snapped[2].begin == 640);
  CHECK(snapped[2].end == 1000);
  const auto past = exec::cuda::snap_to_tensors({{0, 900}, {900, 1000}}, offsets, 1000);
  CHECK(past[0].end == 1000); // no tensor starts after 896: the first bucket takes the rest
  CHECK(past[1].begin == 1000);
  CHECK(past[1].end == 1000);
}

TEST_CASE("optimizer_shards gives every DP rank one piece of each segment", "[exec][cuda]") {
  const std::vector<exec::cuda::BucketRange> buckets{{0, 512}, {512, 1536}};
  const std::vector<std::size_t> splits{1024, 1280}; // a tied embedding at [1024, 1280) inside bucket 1
  const auto rank1 = exec::cuda::optimizer_shards(buckets, splits, 4, 1);
  REQUIRE(rank1.segments.size() == 2);
  REQUIRE(rank1.segments[0].size() == 1);
  REQUIRE(rank1.segments[1].size() == 3);
  CHECK(rank1.segments[1][0].begin == 512);
  CHECK(rank1.segments[1][0].end == 1024);
  CHECK(rank1.segments[1][1].begin == 1024);
  CHECK(rank1.segments[1][1].end == 1280);
  CHECK(rank1.segments[1][2].end == 1536);
  REQUIRE(rank1.owned.size() == 4);
  CHECK(rank1.owned[0].begin == 128); // [0, 512) / 4: rank 1 owns [128, 256)
  CHECK(rank1.owned[0].size == 128);
  CHECK(rank1.owned[1].begin == 512 + 128);
  CHECK(rank1.owned[2].begin == 1024 + 64);
  CHECK(rank1.owned[2].size == 64);
  CHECK(rank1.owned[2].shard_offset == 128 + 128);
  CHECK(rank1.shard_total == 1536 / 4);
  REQUIRE(rank1.first_owned.size() == 2);
  CHECK(rank1.first_owned[0] == 0);
  CHECK(rank1.first_owned[1] == 1);
  // Every element of [0, total) is owned by exactly one rank.
  std::vector<int> owners(1536, 0);
  for (int r = 0; r < 4; ++r) {
    for (const auto& piece : exec::cuda::optimizer_shards(buckets, splits, 4, r).owned) {
      for (std::size_t e = piece.begin; e < piece.begin + piece.size; ++e) {
        ++owners[e];
      }
    }
  }
  CHECK(std::count(owners.begin(), owners.end(), 1) == 1536);
  // A split on a bucket boundary or outside adds nothing; one rank owns everything.
  const auto whole = exec::cuda::optimizer_shards(buckets, std::vector<std::size_t>{512, 0}, 1, 0);
  CHECK(whole.owned.size() == 2);
  CHECK(whole.shard_total == 1536);
}

TEST_CASE("validate_cuda_run_options names what --backend cuda does not support", "[exec][cuda]") {
  exec::RunOptions options;
  options.model = model::find_model("gpt-tiny");
  options.plan.micro_batch_size = 1;
  options.plan.global_batch_size = 2;
  CHECK_NOTHROW(exec::cuda::validate_cuda_run_options(options));
  SECTION("sequence parallelism is supported") {
    options.plan.tp = 2;
    options.plan.sequence_parallel = true;
    CHECK_NOTHROW(exec::cuda::validate_cuda_run_options(options));
  }
  SECTION("precision") {
    options.plan.precision = model::Precision::Fp16;
    CHECK_THROWS_AS(exec::cuda::validate_cuda_run_options(options), InputError);
  }
  SECTION("fault injection is supported") {
    options.fault_rank = 0;
    options.fault_step = 1;
    CHECK_NOTHROW(exec::cuda::validate_cuda_run_options(options));
  }
  SECTION("zero-bubble schedules and ZeRO 1-3 are supported") {
    options.plan.schedule = model::Schedule::ZbH1;
    CHECK_NOTHROW(exec::cuda::validate_cuda_run_options(options));
    options.plan.schedule = model::Schedule::OneFOneB;
    options.plan.dp = 2;
    for (const int stage : {1, 2, 3}) {
      model::set_zero_stage(options.plan, stage, "test", "zero");
      CHECK_NOTHROW(exec::cuda::validate_cuda_run_options(options));
    }
  }
}
