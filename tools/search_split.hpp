// How `cuboid search` splits simulation work across processes. With MPI (search_split_mpi.cpp) the plans of each
// batch are dealt round-robin to the ranks and the outcomes all-gathered (as CSV rows); without MPI
// (search_split_local.cpp) there is one process. Backends differ by CMake source list, not by #ifdef.
#pragma once

#include "sim/analysis/search.hpp"

#include <functional>
#include <memory>

namespace cuboid::tools {

class SearchSplit {
public:
  virtual ~SearchSplit() = default;
  [[nodiscard]] virtual int rank() const = 0;
  [[nodiscard]] virtual int size() const = 0;
  /// Wraps `local` (which evaluates plans on this process) into an evaluator over all processes.
  /// Returns `local` unchanged when size() == 1.
  virtual sim::analysis::Evaluator distribute(sim::analysis::Evaluator local) = 0;
};

/// Initialises MPI when built with it (singleton mode without mpirun), else a one-process split.
std::unique_ptr<SearchSplit> make_search_split();

} // namespace cuboid::tools
