// Host-side plumbing of the CUDA training runtime (exec/cuda/cuda_layout.hpp), tested without a GPU: aligned device
// offsets of a real model's parameter list, DP bucket ranges (the CPU runtime's shares), and the InputErrors for what
// --backend cuda does not support.
#include "exec/cuda/cuda_layout.hpp"
#include "exec/gpt_model.hpp"
#include "model/errors.hpp"
#include "model/model_catalog.hpp"

#include <catch2/catch.hpp>

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
}
