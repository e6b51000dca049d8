// Pipeline schedules as per-stage orders of (phase, micro-batch, chunk) steps, and the layer layout of the model
// chunks of each stage. The step builder turns an order into a chain of edges on the stage's compute stream.
// GPipe (Huang et al. 2019), 1F1B / PipeDream-Flush (Narayanan et al. 2021) and Megatron's interleaved 1F1B
// (megatron/core/pipeline_parallel/schedules.py, forward_backward_pipelining_with_interleaving); zero-bubble ZB-H1 and
// ZB-V (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024, arXiv 2401.10241; sail-sg/zero-bubble-pipeline-
// parallelism), whose orders also hold the weight-gradient (W) steps split off the backward.
#pragma once

#include "model/plan.hpp"
#include "model/task_graph.hpp"

#include <cstdint>
#include <vector>

namespace cuboid::model {

/// One entry of a stage's order: run `phase` of model chunk `chunk` for micro-batch `microbatch`.
struct ScheduleStep {
  Phase phase = Phase::Forward;
  int microbatch = 0;
  int chunk = 0;
  bool operator==(const ScheduleStep&) const = default;
};

/// The schedule actually used: vp > 1 with 1F1B or Interleaved -> Interleaved; Interleaved with vp == 1 -> 1F1B;
/// GPipe stays GPipe (with vp > 1 it runs chunk-major: all forwards of chunk 0, then chunk 1, ...); zb-h1 and zb-v
/// stay themselves.
Schedule effective_schedule(const Plan& plan);

/// Order of steps on pipeline stage `stage` (0 <= stage < pp) for `num_microbatches` micro-batches and `vp` chunks.
/// Every (micro-batch, chunk) appears once as Forward and once as Backward, Forward first; with zb-h1 / zb-v
/// (splits_backward) Backward is the input-gradient step B and each (micro-batch, chunk) also appears once as
/// WeightGrad (W), after its B. Interleaved requires num_microbatches % pp == 0 (Megatron raises otherwise) and zb-h1
/// num_microbatches >= pp: both throw InfeasibleError. zb-v requires vp == 2.
std::vector<ScheduleStep> stage_order(Schedule schedule, int pp, int stage, int num_microbatches, int vp);

/// Largest number of (micro-batch, chunk) forwards whose backward has not yet run, over the order. In an order with
/// WeightGrad steps a micro-batch stays in flight until its W (the inputs of the weight-gradient GEMMs are kept).
int peak_in_flight(const std::vector<ScheduleStep>& order);

/// Layers and embedding/head placement of one model chunk of a stage.
struct ChunkLayout {
  int first_layer = 0;        // global index of the chunk's first layer
  int num_layers = 0;
  bool has_embedding = false; // virtual stage 0
  bool has_head = false;      // last virtual stage: final norm, output layer, loss
};

/// Virtual stage of chunk `chunk` on pipeline stage `stage`: chunk * pp + stage (Megatron's interleaving), or for
/// zb-v the V shape: chunk 0 -> stage, chunk 1 -> 2 pp - 1 - stage (pp = 4: stage 0 holds v0 and v7, stage 3 v3, v4).
int virtual_stage_of(const Plan& plan, int stage, int chunk);
/// Inverse of virtual_stage_of: the (stage, chunk) holding virtual stage `virtual_stage` (0 <= it < pp * vp).
struct StageChunk {
  int stage = 0;
  int chunk = 0;
};
StageChunk locate_virtual_stage(const Plan& plan, int virtual_stage);

/// Layout of every chunk (size plan.vp) of pipeline stage `stage`. Megatron's interleaved assignment: chunk c of
/// stage s is virtual stage v = c * pp + s and holds layers v * Lc .. v * Lc + Lc - 1 (Lc = L / (pp * vp)).
/// Worked example, L = 8, pp = 2, vp = 2 (Lc = 2): stage 0 holds {L0 L1} and {L4 L5}; stage 1 {L2 L3}, {L6 L7}.
/// With vp == 1 the per-stage counts come from layers_per_stage() (uneven first/last stages allowed). zb-v places the
/// chunks by virtual_stage_of (V shape) with the same Lc = L / (2 pp) layers each. With Megatron-Core's
/// account_for_embedding/loss_in_pipeline_split (any vp, zb-v too) virtual stage v holds pipeline_slot_layers(v):
/// L = 6, pp = 2, vp = 2, both flags (8 slots, 2 per chunk): stage 0 holds {E L0} and {L3 L4}, stage 1 {L1 L2} and
/// {L5 loss}; has_embedding / has_head still mark virtual stages 0 and pp*vp - 1.
/// Throws InfeasibleError when the layers cannot be split.
std::vector<ChunkLayout> chunk_layouts(const Plan& plan, std::int64_t num_layers, int stage);

} // namespace cuboid::model
