// Tests for cost profiles (model/cost_profile.hpp): the shipped YAML files mirror the compiled-in defaults, YAML
// round trip, the measured GEMM table, and error messages for bad profile files.
#include "model/cost_model.hpp"
#include "model/cost_profile.hpp"
#include "model/errors.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

using namespace cuboid::model;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("cuboid_cost_profile_test_" + name)).string();
}

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = temp_path(name);
  std::ofstream(path) << text;
  return path;
}

void check_same(const CostProfile& a, const CostProfile& b) {
  CHECK(a.name == b.name);
  CHECK(a.gpu == b.gpu);
  CHECK(a.source == b.source);
  CHECK_THAT(a.gemm_max_efficiency, WithinRel(b.gemm_max_efficiency, 1e-12));
  CHECK_THAT(a.gemm_fp8_max_efficiency, WithinRel(b.gemm_fp8_max_efficiency, 1e-12));
  CHECK_THAT(a.gemm_half_efficiency_flops, WithinRel(b.gemm_half_efficiency_flops, 1e-12));
  CHECK(a.num_sms == b.num_sms);
  CHECK_THAT(a.attention_efficiency, WithinRel(b.attention_efficiency, 1e-12));
  CHECK_THAT(a.attention_bwd_efficiency, WithinRel(b.attention_bwd_efficiency, 1e-12));
  CHECK_THAT(a.hbm_efficiency, WithinRel(b.hbm_efficiency, 1e-12));
  CHECK_THAT(a.launch_overhead_s, WithinRel(b.launch_overhead_s, 1e-12));
  CHECK_THAT(a.nvlink_efficiency, WithinRel(b.nvlink_efficiency, 1e-12));
  CHECK_THAT(a.nic_efficiency, WithinRel(b.nic_efficiency, 1e-12));
  CHECK_THAT(a.nvlink_latency_s, WithinRel(b.nvlink_latency_s, 1e-12));
  CHECK_THAT(a.net_latency_s, WithinRel(b.net_latency_s, 1e-12));
  CHECK(a.nvls_efficiency == Approx(b.nvls_efficiency).epsilon(1e-12));
  CHECK(a.nvls_latency_s == Approx(b.nvls_latency_s).epsilon(1e-12));
  CHECK(a.nvls_min_ranks == b.nvls_min_ranks);
  CHECK_THAT(a.dp_overlap_efficiency, WithinRel(b.dp_overlap_efficiency, 1e-12));
  CHECK(a.cpu_layernorm_fwd_s_per_element == b.cpu_layernorm_fwd_s_per_element);
  CHECK(a.cpu_layernorm_bwd_s_per_element == b.cpu_layernorm_bwd_s_per_element);
  CHECK(a.cpu_rmsnorm_fwd_s_per_element == b.cpu_rmsnorm_fwd_s_per_element);
  CHECK(a.cpu_rmsnorm_bwd_s_per_element == b.cpu_rmsnorm_bwd_s_per_element);
  CHECK(a.cpu_gelu_fwd_s_per_element == b.cpu_gelu_fwd_s_per_element);
  CHECK(a.cpu_gelu_bwd_s_per_element == b.cpu_gelu_bwd_s_per_element);
  CHECK(a.cpu_swiglu_fwd_s_per_element == b.cpu_swiglu_fwd_s_per_element);
  CHECK(a.cpu_swiglu_bwd_s_per_element == b.cpu_swiglu_bwd_s_per_element);
  CHECK(a.cpu_rope_s_per_element == b.cpu_rope_s_per_element);
  REQUIRE(a.gemm_table.size() == b.gemm_table.size());
  for (std::size_t idx = 0; idx < a.gemm_table.size(); ++idx) {
    CHECK(a.gemm_table[idx].m == b.gemm_table[idx].m);
    CHECK(a.gemm_table[idx].efficiency == b.gemm_table[idx].efficiency);
  }
  CHECK(a.assumptions == b.assumptions);
}

} // namespace

// One source of truth: the compiled-in defaults; scenarios/profiles/<gpu>.yaml must load to the same values.
TEST_CASE("model::CostProfile: shipped YAML files equal the compiled-in defaults", "[cost]") {
  for (const auto& gpu : default_profile_gpus()) {
    INFO(gpu);
    check_same(load_profile(std::string(CUBOID_SOURCE_DIR) + "/scenarios/profiles/" + gpu + ".yaml"),
               default_profile(gpu));
  }
  REQUIRE_THROWS_WITH(default_profile("a100-80"), Contains("no default profile for GPU 'a100-80'") &&
                                                       Contains("did you mean 'a100-80gb'"));
}

TEST_CASE("model::CostProfile: YAML round trip", "[cost]") {
  CostProfile profile = default_profile("h100-sxm");
  profile.gemm_table = {{1024, 1024, 1024, 0.55}, {8192, 8192, 8192, 0.78}};
  profile.assumptions.emplace_back("measured on node 7: \"quoted\", with: colon");
  profile.cpu_gelu_fwd_s_per_element = 1.7e-8; // CPU kernel fields survive the round trip
  profile.cpu_rope_s_per_element = 2.1e-9;
  const std::string path = temp_path("round_trip.yaml");
  save_profile(profile, path);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));
  check_same(load_profile(path), profile);
  std::filesystem::remove(path);
}

// A measured table overrides the curve: an exact point returns its value, a point between two others lies between.
TEST_CASE("model::CostProfile: GEMM table lookup", "[cost]") {
  CostProfile profile = default_profile("a100-80gb");
  profile.gemm_table = {{1024, 1024, 1024, 0.5}, {4096, 4096, 4096, 0.8}};
  ClusterSpec cluster;
  cluster.gpu.bf16_flops_per_s = 312e12;
  cluster.gpu.hbm_bw_bytes_per_s = 2.039e12;
  cluster.gpus_per_node = 8;
  const CostModel cost(cluster, profile, Plan{});
  CHECK_THAT(cost.gemm_efficiency(1024, 1024, 1024, 1, false), WithinRel(0.5, 1e-12));
  const double mid = cost.gemm_efficiency(2048, 2048, 2048, 1, false);
  CHECK(mid > 0.5);
  CHECK(mid < 0.8);
}

// Bad input names the file, the key, the value and the valid range (STYLE.md section 5).
// --- CPU prediction across models (branch cpux) --- The CPU kernel fields are optional (a profile written before
// them loads with 0 = priced by bytes) and range-checked like every other field.
TEST_CASE("model::CostProfile: CPU kernel fields are optional and range-checked", "[cost]") {
  {
    const auto path = write_file("old_cpu.yaml", "gpu: cpu\nhbm_efficiency: 0.01\nlaunch_overhead_s: 2e-8\n");
    const CostProfile old = load_profile(path);
    CHECK(old.cpu_gelu_fwd_s_per_element == 0.0);
    CHECK(old.cpu_rmsnorm_bwd_s_per_element == 0.0);
    CHECK(old.cpu_rope_s_per_element == 0.0);
  }
  {
    const auto path = write_file("cpu_kernel.yaml", "gpu: cpu\ncpu_swiglu_bwd_s_per_element: 8.2e-9\n");
    CHECK(load_profile(path).cpu_swiglu_bwd_s_per_element == 8.2e-9);
  }
  {
    const auto path = write_file("cpu_kernel_big.yaml", "gpu: cpu\ncpu_gelu_fwd_s_per_element: 0.5\n");
    REQUIRE_THROWS_AS(load_profile(path), cuboid::InputError);
    REQUIRE_THROWS_WITH(load_profile(path), Contains(path + ":2") && Contains("cpu_gelu_fwd_s_per_element") &&
                                                Contains("0.5 is out of range") && Contains("[0, 0.001]"));
  }
  {
    const auto path = write_file("cpu_kernel_neg.yaml", "cpu_rope_s_per_element: -1e-9\n");
    REQUIRE_THROWS_WITH(load_profile(path), Contains("cpu_rope_s_per_element") && Contains("out of range"));
  }
}

TEST_CASE("model::CostProfile: bad profile files", "[cost]") {
  SECTION("unknown key suggests the closest one") {
    const auto path = write_file("unknown.yaml", "gemm_max_eficiency: 0.8\n");
    REQUIRE_THROWS_AS(load_profile(path), cuboid::InputError);
    REQUIRE_THROWS_WITH(load_profile(path), Contains(path + ":1") && Contains("gemm_max_eficiency") &&
                                                Contains("did you mean 'gemm_max_efficiency'"));
  }
  SECTION("efficiency above 1") {
    const auto path = write_file("above.yaml", "name: x\nhbm_efficiency: 1.5\n");
    REQUIRE_THROWS_WITH(load_profile(path), Contains(path + ":2") && Contains("hbm_efficiency") &&
                                                Contains("1.5 is out of range (valid: (0, 1])"));
  }
  SECTION("negative latency") {
    const auto path = write_file("negative.yaml", "nvlink_latency_s: -1e-6\n");
    REQUIRE_THROWS_WITH(load_profile(path), Contains("nvlink_latency_s") && Contains("-1e-06 is out of range"));
  }
  SECTION("NaN") {
    const auto path = write_file("nan.yaml", "attention_efficiency: .nan\n");
    REQUIRE_THROWS_WITH(load_profile(path), Contains("attention_efficiency") && Contains("nan is out of range"));
  }
  SECTION("not a number") {
    const auto path = write_file("text.yaml", "nic_efficiency: fast\n");
    REQUIRE_THROWS_WITH(load_profile(path), Contains("nic_efficiency") && Contains("'fast' is not a number"));
  }
  SECTION("bad GEMM table entry") {
    const auto path = write_file("table.yaml", "gemm_table:\n  - {m: 1024, n: 1024, k: 1024, efficency: 0.5}\n");
    REQUIRE_THROWS_WITH(load_profile(path), Contains("gemm_table[0].efficency") && Contains("did you mean 'efficiency'"));
  }
  SECTION("missing file") {
    REQUIRE_THROWS_WITH(load_profile("/nonexistent/profile.yaml"),
                        Contains("/nonexistent/profile.yaml") && Contains("not found"));
  }
}
