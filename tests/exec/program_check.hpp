// Checks on sets of per-rank programs shared by the schedule and lowering tests.
#pragma once

#include "exec/program.hpp"

#include <set>
#include <tuple>
#include <vector>

namespace cuboid::exec::test {

// Executes programs round-robin: a Recv blocks until the matching Send was executed. Returns true if all finish.
inline bool runs_to_completion(const std::vector<Program>& programs) {
  std::vector<std::size_t> pc(programs.size(), 0);
  std::multiset<std::tuple<int, int, int>> in_flight; // (from, to, tag)
  bool progress = true;
  while (progress) {
    progress = false;
    for (std::size_t rank = 0; rank < programs.size(); ++rank) {
      while (pc[rank] < programs[rank].instrs.size()) {
        const Instr& instr = programs[rank].instrs[pc[rank]];
        if (instr.kind == InstrKind::Send) {
          in_flight.insert({static_cast<int>(rank), instr.peer, instr.tag});
        } else if (instr.kind == InstrKind::Recv) {
          const auto it = in_flight.find({instr.peer, static_cast<int>(rank), instr.tag});
          if (it == in_flight.end()) {
            break;
          }
          in_flight.erase(it);
        }
        ++pc[rank];
        progress = true;
      }
    }
  }
  for (std::size_t rank = 0; rank < programs.size(); ++rank) {
    if (pc[rank] != programs[rank].instrs.size()) {
      return false;
    }
  }
  return in_flight.empty();
}

// True if no instruction touches a (chunk, micro-batch) after its Free.
inline bool no_use_after_free(const Program& program) {
  std::set<std::pair<int, int>> freed;
  for (const Instr& instr : program.instrs) {
    const std::pair<int, int> key{instr.chunk, instr.microbatch};
    if (instr.kind == InstrKind::Free) {
      freed.insert(key);
    } else if (instr.microbatch >= 0 && freed.contains(key)) {
      return false;
    }
  }
  return true;
}

} // namespace cuboid::exec::test
