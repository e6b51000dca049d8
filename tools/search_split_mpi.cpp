// MPI SearchSplit: the plans of each batch are dealt round-robin to the ranks; each rank simulates its share and the
// outcomes travel back as search-CSV rows (the same text a --csv file holds), so every rank ends with the same
// results and rank 0 prints them. The result is identical to a single-process search (tests/tools).
#include "sim/analysis/csv.hpp"
#include "sim/analysis/search_csv.hpp"
#include "tools/search_split.hpp"

#include <fmt/format.h>
#include <mpi.h>

#include <sstream>
#include <stdexcept>

namespace cuboid::tools {

namespace {
void mpi_check(int code, const char* call) {
  if (code != MPI_SUCCESS) {
    throw std::runtime_error(fmt::format("{} failed with MPI error {}", call, code));
  }
}

class MpiSplit final : public SearchSplit {
public:
  MpiSplit() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized == 0) {
      mpi_check(MPI_Init(nullptr, nullptr), "MPI_Init");
      owns_mpi_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiSplit() override {
    if (owns_mpi_) {
      MPI_Finalize();
    }
  }
  MpiSplit(const MpiSplit&) = delete;
  MpiSplit& operator=(const MpiSplit&) = delete;
  MpiSplit(MpiSplit&&) = delete;
  MpiSplit& operator=(MpiSplit&&) = delete;

  [[nodiscard]] int rank() const override { return rank_; }
  [[nodiscard]] int size() const override { return size_; }

  sim::analysis::Evaluator distribute(sim::analysis::Evaluator local) override {
    if (size_ == 1) {
      return local;
    }
    return [this, local](const std::vector<sim::analysis::PlanOutcome>& plans) {
      std::vector<sim::analysis::PlanOutcome> mine;
      for (std::size_t item = static_cast<std::size_t>(rank_); item < plans.size();
           item += static_cast<std::size_t>(size_)) {
        mine.push_back(plans[item]);
      }
      std::string text;
      for (const auto& outcome : local(mine)) {
        text += sim::analysis::csv_join(sim::analysis::outcome_to_csv(outcome)) + "\n";
      }
      const std::vector<std::string> all = all_gather_text(text);
      std::vector<sim::analysis::PlanOutcome> out(plans.size());
      for (int source = 0; source < size_; ++source) {
        std::istringstream in(all[static_cast<std::size_t>(source)]);
        std::vector<std::string> fields;
        int line_no = 0;
        std::size_t item = static_cast<std::size_t>(source);
        while (sim::analysis::csv_read_record(in, fields, "mpi", line_no)) {
          out[item] = sim::analysis::outcome_from_csv(fields, fmt::format("mpi rank {}", source));
          item += static_cast<std::size_t>(size_);
        }
      }
      return out;
    };
  }

private:
  std::vector<std::string> all_gather_text(const std::string& text) const {
    const int length = static_cast<int>(text.size());
    std::vector<int> lengths(static_cast<std::size_t>(size_));
    mpi_check(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Allgather");
    std::vector<int> offsets(static_cast<std::size_t>(size_), 0);
    int total = 0;
    for (std::size_t idx = 0; idx < lengths.size(); ++idx) {
      offsets[idx] = total;
      total += lengths[idx];
    }
    std::string buffer(static_cast<std::size_t>(total), '\0');
    mpi_check(MPI_Allgatherv(text.data(), length, MPI_CHAR, buffer.data(), lengths.data(), offsets.data(), MPI_CHAR,
                             MPI_COMM_WORLD),
              "MPI_Allgatherv");
    std::vector<std::string> out;
    for (std::size_t idx = 0; idx < lengths.size(); ++idx) {
      out.push_back(buffer.substr(static_cast<std::size_t>(offsets[idx]), static_cast<std::size_t>(lengths[idx])));
    }
    return out;
  }

  int rank_ = 0;
  int size_ = 1;
  bool owns_mpi_ = false;
};
} // namespace

std::unique_ptr<SearchSplit> make_search_split() {
  return std::make_unique<MpiSplit>();
}

} // namespace cuboid::tools
