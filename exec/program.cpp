// Program helpers: tags and human-readable instruction names.
#include "exec/program.hpp"

#include <fmt/format.h>

namespace cuboid::exec {

int p2p_tag(int microbatch, int sender_chunk, int vp, Direction direction) {
  return (microbatch * vp + sender_chunk) * 2 + (direction == Direction::Forward ? 0 : 1);
}

std::string to_string(InstrKind kind) {
  switch (kind) {
  case InstrKind::Forward: return "forward";
  case InstrKind::Backward: return "backward";
  case InstrKind::Send: return "send";
  case InstrKind::Recv: return "recv";
  case InstrKind::CollectiveStart: return "collective-start";
  case InstrKind::CollectiveWait: return "collective-wait";
  case InstrKind::OptimizerStep: return "optimizer";
  case InstrKind::Free: return "free";
  case InstrKind::WeightGrad: return "weight-grad";
  case InstrKind::LocalMove: return "local-move";
  }
  return "?";
}

std::string describe(const Instr& instr) {
  const char* dir = instr.direction == Direction::Forward ? "fwd" : "bwd";
  switch (instr.kind) {
  case InstrKind::Forward:
  case InstrKind::Backward:
  case InstrKind::WeightGrad: {
    const char* phase = instr.kind == InstrKind::Forward ? "fwd" : instr.kind == InstrKind::Backward ? "bwd" : "wgrad";
    if (instr.unit == UnitKind::Layer) {
      return fmt::format("{} L{} mb{} c{}", phase, instr.layer, instr.microbatch, instr.chunk);
    }
    return fmt::format("{} {} mb{} c{}", phase, instr.unit == UnitKind::Embedding ? "embed" : "head", instr.microbatch,
                       instr.chunk);
  }
  case InstrKind::Send: return fmt::format("send {} mb{} c{} -> r{}", dir, instr.microbatch, instr.chunk, instr.peer);
  case InstrKind::Recv: return fmt::format("recv {} mb{} c{} <- r{}", dir, instr.microbatch, instr.chunk, instr.peer);
  case InstrKind::CollectiveStart: return fmt::format("dp bucket {} start", instr.bucket);
  case InstrKind::CollectiveWait: return fmt::format("dp bucket {} wait", instr.bucket);
  case InstrKind::OptimizerStep: return "optimizer";
  case InstrKind::Free: return fmt::format("free mb{} c{}", instr.microbatch, instr.chunk);
  case InstrKind::LocalMove: return fmt::format("move {} mb{} c{} -> c{}", dir, instr.microbatch, instr.chunk, instr.peer);
  }
  return "?";
}

} // namespace cuboid::exec
