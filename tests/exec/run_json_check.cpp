// cuboid_run_json_check: checks the stdout of `cuboid run --json` (issue 5's interface): the whole output is ONE JSON
// object (so ranks other than 0 printed nothing), `ranks` equals the expected world size, `losses` holds one finite
// number per step, `step_time_s` and `predicted_step_time_s` are positive and finite. With --reference (the stdout
// of another run of the same training, e.g. a single rank) every loss must match within --rel-tol. Exit 0 = OK.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace {

bool load(const std::string& path, nlohmann::json& out) {
  std::ifstream file(path);
  if (!file) {
    std::fprintf(stderr, "%s: cannot read\n", path.c_str());
    return false;
  }
  std::stringstream text;
  text << file.rdbuf();
  try {
    out = nlohmann::json::parse(text.str()); // the whole text: trailing output (another rank's) fails here
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "%s: not exactly one JSON object: %s\n", path.c_str(), e.what());
    return false;
  }
  return true;
}

bool positive_number(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number() || !std::isfinite(j[key].get<double>()) || j[key].get<double>() <= 0.0) {
    std::fprintf(stderr, "%s: missing or not a positive finite number\n", key);
    return false;
  }
  return true;
}

} // namespace

int main(int argc, char** argv) {
  std::string json_path;
  std::string reference_path;
  long ranks = -1;
  long steps = -1;
  double rel_tol = 1e-4;
  for (int idx = 1; idx + 1 < argc; idx += 2) {
    const std::string flag = argv[idx];
    const std::string value = argv[idx + 1];
    if (flag == "--json") {
      json_path = value;
    } else if (flag == "--reference") {
      reference_path = value;
    } else if (flag == "--ranks") {
      ranks = std::strtol(value.c_str(), nullptr, 10);
    } else if (flag == "--steps") {
      steps = std::strtol(value.c_str(), nullptr, 10);
    } else if (flag == "--rel-tol") {
      rel_tol = std::strtod(value.c_str(), nullptr);
    } else {
      std::fprintf(stderr, "unknown flag %s (valid: --json, --reference, --ranks, --steps, --rel-tol)\n", flag.c_str());
      return 2;
    }
  }
  nlohmann::json run;
  if (json_path.empty() || !load(json_path, run)) {
    return 1;
  }
  int failures = 0;
  if (!run.contains("ranks") || run["ranks"] != ranks) {
    std::fprintf(stderr, "ranks: %s, expected %ld\n", run.value("ranks", nlohmann::json()).dump().c_str(), ranks);
    ++failures;
  }
  const nlohmann::json losses = run.value("losses", nlohmann::json());
  if (!losses.is_array() || static_cast<long>(losses.size()) != steps) {
    std::fprintf(stderr, "losses: %s, expected %ld numbers\n", losses.dump().c_str(), steps);
    return 1;
  }
  for (const auto& loss : losses) {
    if (!loss.is_number() || !std::isfinite(loss.get<double>())) {
      std::fprintf(stderr, "losses: %s is not a finite number\n", loss.dump().c_str());
      ++failures;
    }
  }
  // The CPU backend reports the global gradient norm of every step (before clipping).
  if (run.value("backend", nlohmann::json()) == nlohmann::json("cpu")) {
    const nlohmann::json norms = run.value("grad_norms", nlohmann::json());
    if (!norms.is_array() || norms.size() != losses.size()) {
      std::fprintf(stderr, "grad_norms: %s, expected %zu numbers\n", norms.dump().c_str(), losses.size());
      ++failures;
    } else {
      for (const auto& norm : norms) {
        if (!norm.is_number() || !std::isfinite(norm.get<double>()) || norm.get<double>() <= 0.0) {
          std::fprintf(stderr, "grad_norms: %s is not a positive finite number\n", norm.dump().c_str());
          ++failures;
        }
      }
    }
  }
  failures += positive_number(run, "step_time_s") ? 0 : 1;
  failures += positive_number(run, "predicted_step_time_s") ? 0 : 1;
  if (!reference_path.empty()) {
    nlohmann::json ref;
    if (!load(reference_path, ref)) {
      return 1;
    }
    const nlohmann::json ref_losses = ref.value("losses", nlohmann::json());
    if (!ref_losses.is_array() || ref_losses.size() != losses.size()) {
      std::fprintf(stderr, "reference losses: %s, expected %zu numbers\n", ref_losses.dump().c_str(), losses.size());
      return 1;
    }
    for (std::size_t step = 0; step < losses.size(); ++step) {
      const double got = losses[step].get<double>();
      const double want = ref_losses[step].get<double>();
      const double rel = std::abs(got - want) / std::abs(want);
      std::printf("step %zu: loss %.6f reference %.6f rel.diff %.2e%s\n", step + 1, got, want, rel,
                  rel <= rel_tol ? "" : "  MISMATCH");
      failures += rel <= rel_tol ? 0 : 1;
    }
  }
  if (failures > 0) {
    std::fprintf(stderr, "cuboid run --json check FAILED (%d problems)\n", failures);
    return 1;
  }
  std::printf("cuboid run --json OK: %ld ranks, %ld finite losses, step %.4g s measured, %.4g s predicted\n", ranks,
              steps, run["step_time_s"].get<double>(), run["predicted_step_time_s"].get<double>());
  return 0;
}
