// One-process SearchSplit, used when cuboid is built without MPI.
#include "tools/search_split.hpp"

namespace cuboid::tools {

namespace {
class LocalSplit final : public SearchSplit {
public:
  [[nodiscard]] int rank() const override { return 0; }
  [[nodiscard]] int size() const override { return 1; }
  sim::analysis::Evaluator distribute(sim::analysis::Evaluator local) override {
    return local;
  }
};
} // namespace

std::unique_ptr<SearchSplit> make_search_split() { return std::make_unique<LocalSplit>(); }

} // namespace cuboid::tools
