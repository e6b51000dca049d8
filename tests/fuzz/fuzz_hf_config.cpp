// libFuzzer harness: the Hugging Face config.json loader (model/model_loader.cpp) on arbitrary bytes. Bad input
// must end in InputError/InfeasibleError; anything else (crash, sanitizer report, other exception) is a finding.
// An accepted config must give a model whose parameter count is finite and positive.
#include "model/errors.hpp"
#include "model/model_catalog.hpp"
#include "tests/fuzz/fuzz_input.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = cuboid::fuzz::write_input(data, size, "fuzz.config.json");
  try {
    const cuboid::model::ModelSpec spec = cuboid::model::load_model(path);
    const double params = spec.num_parameters();
    if (!std::isfinite(params) || params <= 0.0) {
      std::fprintf(stderr, "accepted config gives %g parameters\n", params);
      std::abort();
    }
  } catch (const cuboid::InputError&) {
  } catch (const cuboid::InfeasibleError&) {
  }
  return 0;
}
