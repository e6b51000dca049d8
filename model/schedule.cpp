// Pipeline schedule orders and chunk layouts (see schedule.hpp). The interleaved order follows Megatron-LM's
// forward_backward_pipelining_with_interleaving (core v0.7): warm-up, get_model_chunk_id and the micro-batch id
// inside a chunk are reproduced as written there.
#include "model/schedule.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace cuboid::model {

Schedule effective_schedule(const Plan& plan) {
  if (plan.schedule == Schedule::GPipe || splits_backward(plan.schedule)) {
    return plan.schedule;
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

// --- zero-bubble schedules ---
// ZB-H1 (Qi et al. 2024, section 3.1 and Fig. 3, top): 1F1B with the backward split into B and W, where stage s
// runs pp - s warm-up forwards and defers the W of its first s micro-batches to the end, so the W passes fill the
// cool-down bubble of the later stages: bubble ~(pp - 1)(F + B - W) instead of 1F1B's (pp - 1)(F + B + W), with at
// most pp micro-batches in flight on any stage (1F1B's peak, reached on stage 0). Order as in the handcrafted job
// list of PaddlePaddle's pipeline_scheduler_ZBH1 pass (pipeline_zero_bubble.py): warm-up F x (pp - s); (B, F) x s;
// (B, W, F) x (m - pp); (B, W) x (pp - s); then W of micro-batches 0 .. s - 1.
// Worked example, pp = 4, m = 6, stage 3: F0 B0 F1 B1 F2 B2 F3 B3 W3 F4 B4 W4 F5 B5 W5 W0 W1 W2.
std::vector<ScheduleStep> zb_h1_order(int pp, int stage, int num_microbatches) {
  if (num_microbatches < pp) {
    throw InfeasibleError(fmt::format("zb-h1 schedule: {} micro-batches, fewer than pp ({})", num_microbatches, pp));
  }
  std::vector<ScheduleStep> order;
  order.reserve(static_cast<std::size_t>(3 * num_microbatches));
  int fwd = 0;
  int bwd = 0;
  const auto forward = [&order, &fwd] { order.push_back({Phase::Forward, fwd++, 0}); };
  const auto backward = [&order, &bwd](bool with_w) {
    order.push_back({Phase::Backward, bwd, 0});
    if (with_w) {
      order.push_back({Phase::WeightGrad, bwd, 0});
    }
    ++bwd;
  };
  for (int idx = 0; idx < pp - stage; ++idx) {
    forward();
  }
  for (int idx = 0; idx < stage; ++idx) {
    backward(false);
    forward();
  }
  for (int idx = 0; idx < num_microbatches - pp; ++idx) {
    backward(true);
    forward();
  }
  for (int idx = 0; idx < pp - stage; ++idx) {
    backward(true);
  }
  for (int mb = 0; mb < stage; ++mb) {
    order.push_back({Phase::WeightGrad, mb, 0});
  }
  return order;
}

// ZB-V (Qi et al. 2024, section 6, Fig. 8): two chunks per rank in a V (virtual_stage_of); the handcrafted order
// of PyTorch's ScheduleZBVZeroBubble (torch/distributed/pipelining/schedules.py, contributed with the paper's
// authors): warm-up forwards of chunk 0 (2(pp - s) - 1), then s pairs (F chunk 1, F chunk 0), then pp - s triples
// (F, B, W) of chunk 1; steady (F, B, W) of chunk 0 then of chunk 1; cool-down B's with deferred W's. The order is
// written for max(m, 2 pp - 1) micro-batches and the steps of the extra ones dropped (as PyTorch does). Peak
// activations: 2 pp chunk-micro-batches of half a stage each, 1F1B's pp micro-batches of a stage.
std::vector<ScheduleStep> zb_v_order(int pp, int stage, int num_microbatches) {
  const int padded = std::max(2 * pp - 1, num_microbatches);
  std::vector<ScheduleStep> order;
  order.reserve(static_cast<std::size_t>(6 * padded));
  int f0 = 0, f1 = 0, b0 = 0, b1 = 0;
  const auto add = [&order](Phase phase, int mb, int chunk) { order.push_back({phase, mb, chunk}); };
  for (int idx = 0; idx < 2 * (pp - stage) - 1; ++idx) {
    add(Phase::Forward, f0++, 0);
  }
  for (int idx = 0; idx < stage; ++idx) {
    add(Phase::Forward, f1++, 1);
    add(Phase::Forward, f0++, 0);
  }
  for (int idx = 0; idx < pp - stage; ++idx) {
    add(Phase::Forward, f1++, 1);
    add(Phase::Backward, b1, 1);
    add(Phase::WeightGrad, b1++, 1);
  }
  while (f1 < f0 || f0 < padded) {
    if (f0 < padded) {
      add(Phase::Forward, f0++, 0);
    }
    add(Phase::Backward, b0, 0);
    add(Phase::WeightGrad, b0++, 0);
    add(Phase::Forward, f1++, 1);
    add(Phase::Backward, b1, 1);
    add(Phase::WeightGrad, b1++, 1);
  }
  int w0 = b0;
  int w1 = b1;
  for (int idx = 0; idx < stage; ++idx) {
    add(Phase::Backward, b0++, 0);
    add(Phase::Backward, b1++, 1);
  }
  for (int idx = 0; idx < pp - stage; ++idx) {
    add(Phase::Backward, b0++, 0);
    add(Phase::WeightGrad, w0++, 0);
  }
  while (w1 < b1) {
    add(Phase::WeightGrad, w1++, 1);
  }
  while (w0 < b0) {
    add(Phase::WeightGrad, w0++, 0);
  }
  CUBOID_ASSERT(f0 == padded && f1 == padded && b0 == padded && b1 == padded && w0 == padded && w1 == padded,
                "zb-v order of stage {} is incomplete", stage);
  std::erase_if(order, [num_microbatches](const ScheduleStep& step) { return step.microbatch >= num_microbatches; });
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
  case Schedule::ZbH1:
    CUBOID_ASSERT(vp == 1, "zb-h1 with vp={}", vp);
    return zb_h1_order(pp, stage, num_microbatches);
  case Schedule::ZbV:
    CUBOID_ASSERT(vp == 2, "zb-v with vp={}", vp);
    return zb_v_order(pp, stage, num_microbatches);
  }
  return {};
}

int peak_in_flight(const std::vector<ScheduleStep>& order) {
  const bool split = std::any_of(order.begin(), order.end(),
                                 [](const ScheduleStep& step) { return step.phase == Phase::WeightGrad; });
  const Phase release = split ? Phase::WeightGrad : Phase::Backward;
  int in_flight = 0;
  int peak = 0;
  for (const ScheduleStep& step : order) {
    in_flight += step.phase == Phase::Forward ? 1 : step.phase == release ? -1 : 0;
    peak = std::max(peak, in_flight);
  }
  return peak;
}

int virtual_stage_of(const Plan& plan, int stage, int chunk) {
  if (plan.schedule == Schedule::ZbV && chunk == 1) {
    return 2 * plan.pp - 1 - stage;
  }
  return chunk * plan.pp + stage;
}

StageChunk locate_virtual_stage(const Plan& plan, int virtual_stage) {
  CUBOID_ASSERT(virtual_stage >= 0 && virtual_stage < plan.pp * plan.vp, "virtual stage {} outside pp={} vp={}",
                virtual_stage, plan.pp, plan.vp);
  if (plan.schedule == Schedule::ZbV && virtual_stage >= plan.pp) {
    return {2 * plan.pp - 1 - virtual_stage, 1};
  }
  return {virtual_stage % plan.pp, virtual_stage / plan.pp};
}

std::vector<ChunkLayout> chunk_layouts(const Plan& plan, std::int64_t num_layers, int stage) {
  CUBOID_ASSERT(stage >= 0 && stage < plan.pp, "stage {} outside pp={}", stage, plan.pp);
  std::vector<ChunkLayout> chunks(static_cast<std::size_t>(plan.vp));
  const auto total = static_cast<int>(num_layers);
  if (plan.accounts_in_pipeline_split()) {
    // Megatron-Core's embedding/loss-aware split, any vp (plan.hpp pipeline_slot_layers); the embedding stays on
    // virtual stage 0 and the loss on the last one, as without the flags.
    for (int chunk = 0; chunk < plan.vp; ++chunk) {
      const int virtual_stage = virtual_stage_of(plan, stage, chunk);
      const LayerRange range = pipeline_slot_layers(plan, num_layers, virtual_stage);
      chunks[static_cast<std::size_t>(chunk)] = {range.first_layer, range.num_layers, virtual_stage == 0,
                                                 virtual_stage == plan.pp * plan.vp - 1};
    }
    return chunks;
  }
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
    const int virtual_stage = virtual_stage_of(plan, stage, chunk);
    chunks[static_cast<std::size_t>(chunk)] = {virtual_stage * per_chunk, per_chunk, virtual_stage == 0,
                                               virtual_stage == plan.pp * plan.vp - 1};
  }
  return chunks;
}

} // namespace cuboid::model
