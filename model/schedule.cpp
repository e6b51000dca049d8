// Pipeline schedule orders and chunk layouts (see schedule.hpp). The interleaved order follows Megatron-LM's
// forward_backward_pipelining_with_interleaving (core v0.7): warm-up, get_model_chunk_id and the micro-batch id
// inside a chunk are reproduced as written there.
#include "model/schedule.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace cuboid::model {

Schedule effective_schedule(const Plan& plan) {
  if (plan.schedule == Schedule::GPipe) {
    return Schedule::GPipe;
  }
  return plan.vp > 1 ? Schedule::Interleaved : Schedule::OneFOneB;
}

namespace {

std::vector<ScheduleStep> gpipe_order(int num_microbatches, int vp) {
  // All forwards, then all backwards (Huang et al. 2019). With chunks: chunk-major, backward in reverse chunk order,
  // so every forward's producer on the previous virtual stage was scheduled earlier.
  std::vector<ScheduleStep> order;
  order.reserve(static_cast<std::size_t>(2 * num_microbatches * vp));
  for (int chunk = 0; chunk < vp; ++chunk) {
    for (int mb = 0; mb < num_microbatches; ++mb) {
      order.push_back({Phase::Forward, mb, chunk});
    }
  }
  for (int chunk = vp - 1; chunk >= 0; --chunk) {
    for (int mb = 0; mb < num_microbatches; ++mb) {
      order.push_back({Phase::Backward, mb, chunk});
    }
  }
  return order;
}

std::vector<ScheduleStep> one_f_one_b_order(int pp, int stage, int num_microbatches) {
  // PipeDream-Flush (Narayanan et al. 2021, Fig. 4): warm-up of (pp - stage - 1) forwards, steady 1F1B, cool-down.
  // Peak in-flight micro-batches on stage s: min(pp - s, m).
  std::vector<ScheduleStep> order;
  order.reserve(static_cast<std::size_t>(2 * num_microbatches));
  const int warmup = std::min(pp - stage - 1, num_microbatches);
  for (int mb = 0; mb < warmup; ++mb) {
    order.push_back({Phase::Forward, mb, 0});
  }
  for (int idx = 0; idx < num_microbatches - warmup; ++idx) {
    order.push_back({Phase::Forward, warmup + idx, 0});
    order.push_back({Phase::Backward, idx, 0});
  }
  for (int mb = num_microbatches - warmup; mb < num_microbatches; ++mb) {
    order.push_back({Phase::Backward, mb, 0});
  }
  return order;
}

std::vector<ScheduleStep> interleaved_order(int pp, int stage, int num_microbatches, int vp) {
  if (num_microbatches % pp != 0) {
    throw InfeasibleError(fmt::format("interleaved schedule: number of micro-batches ({}) is not divisible by pp ({})",
                                      num_microbatches, pp));
  }
  const int total = num_microbatches * vp;
  const int group = pp * vp;
  // get_model_chunk_id: virtual id k -> chunk (k mod pp*vp) / pp, reversed for backward.
  const auto chunk_of = [group, pp, vp](int k, bool forward) {
    const int chunk = (k % group) / pp;
    return forward ? chunk : vp - 1 - chunk;
  };
  // get_microbatch_id_in_model_chunk: (k / (pp*vp)) * pp + k mod pp (the same for the k-th backward).
  const auto mb_of = [group, pp](int k) { return (k / group) * pp + k % pp; };
  // Warm-up: (pp - s - 1) * 2 + (vp - 1) * pp, or everything when m == pp ("all_warmup_microbatches").
  const int warmup = num_microbatches == pp ? total : std::min((pp - stage - 1) * 2 + (vp - 1) * pp, total);
  std::vector<ScheduleStep> order;
  order.reserve(static_cast<std::size_t>(2 * total));
  for (int k = 0; k < warmup; ++k) {
    order.push_back({Phase::Forward, mb_of(k), chunk_of(k, true)});
  }
  for (int k = 0; k < total - warmup; ++k) {
    order.push_back({Phase::Forward, mb_of(warmup + k), chunk_of(warmup + k, true)});
    order.push_back({Phase::Backward, mb_of(k), chunk_of(k, false)});
  }
  for (int k = std::max(total - warmup, 0); k < total; ++k) {
    order.push_back({Phase::Backward, mb_of(k), chunk_of(k, false)});
  }
  return order;
}

} // namespace

std::vector<ScheduleStep> stage_order(Schedule schedule, int pp, int stage, int num_microbatches, int vp) {
  CUBOID_ASSERT(pp > 0 && stage >= 0 && stage < pp && num_microbatches > 0 && vp > 0,
                "bad schedule arguments pp={} stage={} m={} vp={}", pp, stage, num_microbatches, vp);
  switch (schedule) {
  case Schedule::GPipe:
    return gpipe_order(num_microbatches, vp);
  case Schedule::OneFOneB:
    CUBOID_ASSERT(vp == 1, "1F1B with vp={} (use the interleaved schedule)", vp);
    return one_f_one_b_order(pp, stage, num_microbatches);
  case Schedule::Interleaved:
    return vp == 1 ? one_f_one_b_order(pp, stage, num_microbatches)
                   : interleaved_order(pp, stage, num_microbatches, vp);
  }
  return {};
}

int peak_in_flight(const std::vector<ScheduleStep>& order) {
  int in_flight = 0;
  int peak = 0;
  for (const ScheduleStep& step : order) {
    in_flight += step.phase == Phase::Forward ? 1 : -1;
    peak = std::max(peak, in_flight);
  }
  return peak;
}

std::vector<ChunkLayout> chunk_layouts(const Plan& plan, std::int64_t num_layers, int stage) {
  CUBOID_ASSERT(stage >= 0 && stage < plan.pp, "stage {} outside pp={}", stage, plan.pp);
  std::vector<ChunkLayout> chunks(static_cast<std::size_t>(plan.vp));
  const auto total = static_cast<int>(num_layers);
  if (plan.vp == 1) {
    const std::vector<int> counts = layers_per_stage(plan, num_layers);
    CUBOID_ASSERT(counts.size() == static_cast<std::size_t>(plan.pp), "layers_per_stage gave {} stages for pp={}",
                  counts.size(), plan.pp);
    int first = 0;
    for (int prev = 0; prev < stage; ++prev) {
      first += counts[static_cast<std::size_t>(prev)];
    }
    chunks[0] = {first, counts[static_cast<std::size_t>(stage)], stage == 0, stage == plan.pp - 1};
    return chunks;
  }
  if (plan.first_stage_layers != 0 || plan.last_stage_layers != 0) {
    throw InfeasibleError(fmt::format("plan.vp: uneven first/last stages ({} / {} layers) cannot be combined with "
                                      "vp = {} model chunks",
                                      plan.first_stage_layers, plan.last_stage_layers, plan.vp));
  }
  if (total % (plan.pp * plan.vp) != 0) {
    throw InfeasibleError(fmt::format("plan.vp: {} layers cannot be split into pp ({}) x vp ({}) equal chunks", total,
                                      plan.pp, plan.vp));
  }
  const int per_chunk = total / (plan.pp * plan.vp);
  for (int chunk = 0; chunk < plan.vp; ++chunk) {
    const int virtual_stage = chunk * plan.pp + stage;
    chunks[static_cast<std::size_t>(chunk)] = {virtual_stage * per_chunk, per_chunk, virtual_stage == 0,
                                               virtual_stage == plan.pp * plan.vp - 1};
  }
  return chunks;
}

} // namespace cuboid::model
