// libFuzzer harness: the YAML scenario loader (model/scenario.cpp, cluster_config.cpp, model_loader.cpp,
// yaml_fields.cpp, plan validation) on arbitrary bytes. An accepted scenario is also turned into its step graph
// (rank classes, at most 20,000 tasks) so that "validated" really means "buildable".
#include "model/errors.hpp"
#include "model/scenario.hpp"
#include "model/step_builder.hpp"
#include "tests/fuzz/fuzz_input.hpp"

namespace {
constexpr std::size_t MAX_FUZZ_TASKS = 20'000;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = cuboid::fuzz::write_input(data, size, "scenario.yaml");
  try {
    const cuboid::model::Scenario scenario = cuboid::model::load_scenario(path);
    (void)cuboid::model::build_step_graph(scenario.model, scenario.cluster, scenario.plan,
                                          cuboid::model::Instantiation::RankClasses, MAX_FUZZ_TASKS);
  } catch (const cuboid::InputError&) {
  } catch (const cuboid::InfeasibleError&) {
  }
  return 0;
}
