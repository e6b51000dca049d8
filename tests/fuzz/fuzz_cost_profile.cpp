// libFuzzer harness: the cost-profile YAML reader (model/cost_profile.cpp) on arbitrary bytes. An accepted profile
// is saved and read back: every numeric field and the GEMM table must survive the round trip exactly.
#include "model/cost_profile.hpp"
#include "model/errors.hpp"
#include "tests/fuzz/fuzz_input.hpp"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = cuboid::fuzz::write_input(data, size, "profile.yaml");
  cuboid::model::CostProfile profile;
  try {
    profile = cuboid::model::load_profile(path);
  } catch (const cuboid::InputError&) {
    return 0;
  }
  const std::string copy_path = path + ".saved.yaml";
  cuboid::model::save_profile(profile, copy_path);
  const cuboid::model::CostProfile copy = cuboid::model::load_profile(copy_path);
  const bool same = copy.gemm_max_efficiency == profile.gemm_max_efficiency &&
                    copy.launch_overhead_s == profile.launch_overhead_s &&
                    copy.nvlink_latency_s == profile.nvlink_latency_s && copy.num_sms == profile.num_sms &&
                    copy.gemm_table.size() == profile.gemm_table.size() &&
                    copy.assumptions.size() == profile.assumptions.size();
  if (!same) {
    std::fprintf(stderr, "cost profile changed in a save/load round trip\n");
    std::abort();
  }
  return 0;
}
