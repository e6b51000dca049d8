// Bad-input table for the validation CSV reader (sim/analysis/published_runs.cpp), which no CLI command reads on
// this branch: each file of tests/data/bad/csv/ must raise InputError whose message names the file, the line, the
// column and the bad value. The CLI-side table is tests/tools/bad_inputs.txt (ctest label bad-input).
#include "model/errors.hpp"
#include "sim/analysis/published_runs.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace {
struct BadCsv {
  const char* file;
  std::vector<std::string> expected; // substrings of the message
};
} // namespace

TEST_CASE("sim::analysis::read_published_runs: every bad CSV is rejected naming file, line, column and value",
          "[sim][bad-input]") {
  const std::string dir = std::string(CUBOID_SOURCE_DIR) + "/tests/data/bad/csv/";
  const std::vector<BadCsv> cases = {
      {"negative-cell.csv", {"negative-cell.csv:2", "'hidden_size'", "'-2304'", "non-negative number"}},
      {"nan-cell.csv", {"nan-cell.csv:2", "'num_layers'", "'nan'"}},
      {"inf-cell.csv", {"inf-cell.csv:2", "'tp'", "'inf'"}},
      {"huge-cell.csv", {"huge-cell.csv:2", "'micro_batch'", "'1e999'"}},
      {"text-in-number.csv", {"text-in-number.csv:2", "'num_gpus'", "'eight'"}},
      {"short-row.csv", {"short-row.csv:2", "28 fields, the header has 29"}},
      {"empty-id.csv", {"empty-id.csv:2", "'id' is empty"}},
      {"missing-column.csv", {"missing-column.csv", "header", "missing column 'global_batch'"}},
      {"unterminated-quote.csv", {"unterminated-quote.csv:2:4", "unterminated quoted field"}},
      {"stray-quote.csv", {"stray-quote.csv:2:8", "inside an unquoted field"}},
      {"after-quote.csv", {"after-quote.csv:2:5", "unexpected 'x' after a closing quote"}},
      {"empty.csv", {"empty.csv", "empty CSV file"}},
      {"no-such-file.csv", {"no-such-file.csv", "cannot open CSV file"}},
  };
  for (const BadCsv& bad : cases) {
    DYNAMIC_SECTION(bad.file) {
      std::string message;
      try {
        (void)cuboid::sim::analysis::read_published_runs(dir + bad.file);
      } catch (const cuboid::InputError& error) {
        message = error.what();
      }
      INFO("message: " << message);
      REQUIRE_FALSE(message.empty());
      for (const std::string& expected : bad.expected) {
        CHECK_THAT(message, Catch::Contains(expected));
      }
    }
  }
}
