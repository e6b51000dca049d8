// Program: the ordered instruction list one rank executes per training step, lowered from the TaskGraph
// (lowering.hpp) or built directly (internal_schedule.hpp). The runtime runs it top to bottom: compute instructions
// block the rank, sends are non-blocking (buffer kept until the end of the step), receives complete before
// the next instruction, DP bucket collectives start at CollectiveStart and complete at CollectiveWait.
#pragma once

#include "model/task_graph.hpp"

#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace cuboid::exec {

// WeightGrad: the deferred weight-gradient half of a zero-bubble backward (Backward is then its input-gradient half).
// LocalMove: hands a chunk's output (Forward) or input gradient (Backward) to the next chunk of the same rank, where
// the pipeline turns without a message (zb-v on stage pp - 1); `chunk` is the source, `peer` the target chunk.
enum class InstrKind {
  Forward, Backward, Send, Recv, CollectiveStart, CollectiveWait, OptimizerStep, Free, WeightGrad, LocalMove
};
/// What a Forward/Backward instruction runs: the embedding, one transformer layer, or final norm + head + loss.
enum class UnitKind { Embedding, Layer, Head };
enum class Direction { Forward, Backward };
/// ZeRO-2/3 DP collectives (CollectiveStart): all-gather a unit's parameters before its forward or backward, or
/// reduce-scatter the gradients of the units that ran backward since the last one.
enum class ZeroOp { None, GatherParams, ScatterGrads };

constexpr model::TaskId NO_TASK = std::numeric_limits<model::TaskId>::max();

struct Instr {
  InstrKind kind = InstrKind::Forward;
  model::TaskId task = NO_TASK;     // the IR task this implements (NO_TASK for internal programs)
  model::Stream stream = model::Stream::Compute;
  UnitKind unit = UnitKind::Layer;  // Forward / Backward
  int layer = -1;                   // global layer index (UnitKind::Layer)
  int chunk = 0;                    // local model chunk whose activations are read or written
  int microbatch = -1;              // local micro-batch 0 .. m-1
  Direction direction = Direction::Forward; // Send / Recv: activations (Forward) or their gradients (Backward)
  int peer = -1;                    // Send / Recv: world rank
  int tag = -1;                     // Send / Recv: p2p_tag()
  int bucket = -1;                  // CollectiveStart / CollectiveWait
  ZeroOp zero = ZeroOp::None;       // CollectiveStart of a ZeRO-2/3 task (unit / layer: the unit it gathers)
  int expert_chunk = -1;            // --- mixture of experts --- CollectiveStart / Wait reducing this local chunk's
                                    // routed-expert gradients over the expert-DP group
  std::string label;                // for traces and error messages
};

struct Program {
  int rank = 0;
  std::vector<Instr> instrs;
  /// Relative sizes of the DP gradient buckets (bucket k covers that share of this rank's flat gradient buffer,
  /// in backward order); empty when there is no DP reduction.
  std::vector<double> bucket_weights;
};

/// Tag of a pipeline message: unique per (sender chunk, micro-batch, direction) between two ranks, so messages
/// cannot cross: ((microbatch * vp + sender_chunk) * 2 + direction).
[[nodiscard]] int p2p_tag(int microbatch, int sender_chunk, int vp, Direction direction);

[[nodiscard]] std::string to_string(InstrKind kind);
/// "fwd L3 mb2 c0", "send fwd mb2 c0 -> r4", ...
[[nodiscard]] std::string describe(const Instr& instr);

/// --- zero-bubble schedules --- A LocalMove: hands the activation (forward) or the input gradient (backward) from
/// one chunk's micro-batch state to the other's (both runtimes' MicroState have act and grad).
template <typename MicroState> void local_move(const Instr& instr, MicroState& from, MicroState& to) {
  if (instr.direction == Direction::Forward) {
    to.act = std::move(from.act);
  } else {
    to.grad = std::move(from.grad);
  }
}

} // namespace cuboid::exec
