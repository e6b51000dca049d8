// libFuzzer harness: the strict CSV readers (sim/analysis/published_runs.cpp read_csv_table and
// read_published_runs, the validation data; sim/analysis/search_csv.cpp read_search_csv, what `search --resume`
// reads back) on arbitrary bytes. Bad input must end in InputError.
#include "model/errors.hpp"
#include "sim/analysis/published_runs.hpp"
#include "sim/analysis/search_csv.hpp"
#include "tests/fuzz/fuzz_input.hpp"

#include <sstream>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = cuboid::fuzz::write_input(data, size, "runs.csv");
  try {
    (void)cuboid::sim::analysis::read_csv_table(path);
  } catch (const cuboid::InputError&) {
  }
  try {
    (void)cuboid::sim::analysis::read_published_runs(path);
  } catch (const cuboid::InputError&) {
  }
  try {
    std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
    (void)cuboid::sim::analysis::read_search_csv(in, "search.csv");
  } catch (const cuboid::InputError&) {
  }
  return 0;
}
