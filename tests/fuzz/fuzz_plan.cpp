// libFuzzer harness: plan validation, the step-graph builder and the simulator fed arbitrary integers (tp, pp, dp,
// vp, batch sizes, layer splits, model shapes, GPU counts; one time in eight an absurd one up to 2^40 or 2^62).
// Absurd plans must be rejected up front (InputError/InfeasibleError) without building anything large: the
// builder gets a 4,000-task bound here, and libFuzzer's RSS and malloc limits catch a plan that allocates first.
// A graph that is built is simulated; its step time must be finite and positive.
#include "model/cost_model.hpp"
#include "model/cost_profile.hpp"
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/plan.hpp"
#include "model/step_builder.hpp"
#include "sim/simulator.hpp"
#include "tests/fuzz/fuzz_input.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace {
constexpr std::size_t MAX_FUZZ_TASKS = 4'000;
constexpr int HUGE_BITS = 40;
constexpr int HUGE_BATCH_BITS = 62;

int to_int(std::int64_t value) {
  return value > std::numeric_limits<int>::max() ? std::numeric_limits<int>::max() : static_cast<int>(value);
}

cuboid::model::ModelSpec make_model(cuboid::fuzz::ByteReader& in) {
  static const char* const CATALOG[] = {"gpt-tiny", "llama-tiny", "gpt3-1.3b", "custom"};
  const std::string name = in.pick(CATALOG);
  if (name != "custom") {
    return cuboid::model::find_model(name);
  }
  cuboid::model::ModelSpec spec = cuboid::model::find_model(in.flag() ? "gpt-tiny" : "llama-tiny");
  spec.name = "fuzz";
  spec.num_layers = in.size_like(0, 48, HUGE_BITS);
  spec.num_attention_heads = in.size_like(0, 32, HUGE_BITS);
  spec.num_query_groups = in.flag() ? spec.num_attention_heads : in.size_like(0, 32, HUGE_BITS);
  spec.head_dim = in.size_like(0, 128, HUGE_BITS);
  spec.hidden_size = in.flag() ? spec.num_attention_heads * (spec.head_dim % 1024) : in.size_like(0, 4096, HUGE_BITS);
  spec.ffn_hidden_size = in.size_like(0, 16384, HUGE_BITS);
  spec.vocab_size = in.size_like(0, 65536, HUGE_BITS);
  spec.seq_length = in.size_like(0, 8192, HUGE_BITS);
  return spec;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace cuboid;
  fuzz::ByteReader in(data, size);
  try {
    const model::ModelSpec spec = make_model(in);
    model::validate(spec, "fuzz");
    model::Plan plan;
    plan.tp = to_int(in.size_like(0, 8, HUGE_BITS));
    plan.pp = to_int(in.size_like(0, 8, HUGE_BITS));
    plan.dp = to_int(in.size_like(0, 8, HUGE_BITS));
    plan.vp = to_int(in.size_like(1, 4, HUGE_BITS));
    plan.micro_batch_size = in.size_like(0, 8, HUGE_BATCH_BITS);
    plan.global_batch_size = in.size_like(0, 256, HUGE_BATCH_BITS);
    static const model::Schedule SCHEDULES[] = {model::Schedule::GPipe, model::Schedule::OneFOneB,
                                                model::Schedule::Interleaved};
    static const model::Recompute RECOMPUTES[] = {model::Recompute::None, model::Recompute::Selective,
                                                  model::Recompute::Full};
    static const model::Precision PRECISIONS[] = {model::Precision::Bf16, model::Precision::Fp16,
                                                  model::Precision::Fp8};
    plan.schedule = in.pick(SCHEDULES);
    plan.recompute = in.pick(RECOMPUTES);
    plan.precision = in.pick(PRECISIONS);
    plan.sequence_parallel = in.flag();
    plan.distributed_optimizer = in.flag();
    plan.overlap_grad_reduce = in.flag();
    plan.flash_attention = in.flag();
    plan.grad_bucket_bytes = static_cast<double>(in.size_like(1, 1 << 28, HUGE_BITS));
    plan.first_stage_layers = to_int(in.size_like(0, 4, HUGE_BITS) - (in.flag() ? 2 : 0));
    plan.last_stage_layers = to_int(in.size_like(0, 4, HUGE_BITS) - (in.flag() ? 2 : 0));
    const std::vector<std::string> gpus = model::builtin_gpu_names();
    const std::string& gpu = gpus[in.bits(8) % gpus.size()];
    // Usually the plan's own world size (the interesting case), sometimes an arbitrary count.
    const double world = static_cast<double>(plan.tp) * plan.pp * plan.dp;
    const int num_gpus = in.flag() ? to_int(static_cast<std::int64_t>(std::min(world, 1e18)))
                                   : to_int(in.size_like(-2, 64, HUGE_BITS));
    const int gpus_per_node = to_int(in.size_like(0, 16, 8));
    const model::ClusterSpec cluster = model::make_cluster(gpu, num_gpus, gpus_per_node, "fuzz");
    model::validate(plan, spec, cluster, "fuzz");
    const auto instantiation = in.flag() ? model::Instantiation::AllRanks : model::Instantiation::RankClasses;
    const model::TaskGraph graph = model::build_step_graph(spec, cluster, plan, instantiation, MAX_FUZZ_TASKS);
    const model::CostModel cost(cluster, model::default_profile(cluster.gpu.name), plan);
    sim::SimOptions options;
    options.record_timeline = false;
    options.record_memory_timeline = false;
    const sim::SimResult result = sim::simulate(graph, cost, options);
    if (!std::isfinite(result.step_time_s) || result.step_time_s <= 0.0) {
      std::fprintf(stderr, "simulated step time %g s\n", result.step_time_s);
      std::abort();
    }
  } catch (const InputError&) {
  } catch (const InfeasibleError&) {
  }
  return 0;
}
