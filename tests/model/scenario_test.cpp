// Scenario files: the shipped examples load and validate; a table of bad inputs (scenario YAML, model YAML, HF
// config JSON) each fails with the right error type and a message naming the file, the field and the bad value.
#include "model/errors.hpp"
#include "model/model_catalog.hpp"
#include "model/scenario.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

using cuboid::InfeasibleError;
using cuboid::InputError;
using namespace cuboid::model;
using Catch::Matchers::Contains;

namespace {
const std::string EXAMPLES = std::string(CUBOID_SOURCE_DIR) + "/scenarios/examples/";

// A fresh directory under the system temp dir, removed with its files at the end of the test.
class TempDir {
public:
  TempDir() {
    std::random_device random;
    path_ = std::filesystem::temp_directory_path() / ("cuboid-spec-test-" + std::to_string(random()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string write(const std::string& name, const std::string& text) const {
    const std::filesystem::path file = path_ / name;
    std::ofstream(file) << text;
    return file.string();
  }

private:
  std::filesystem::path path_;
};

std::string scenario(const std::string& model, const std::string& cluster, const std::string& plan) {
  return "model: " + model + "\ncluster: " + cluster + "\nplan: " + plan + "\n";
}

const std::string MODEL = "gpt-tiny";
const std::string CLUSTER = "{system: dgx-a100, num_gpus: 4}";
const std::string PLAN = "{tp: 2, dp: 2, micro_batch_size: 1, global_batch_size: 8}";

std::string plan_with(const std::string& extra) { return "{micro_batch_size: 1, global_batch_size: 8, " + extra + "}"; }
std::string llama_config(const std::string& replace_key, const std::string& replace_value) {
  std::string text = "{\n";
  const std::vector<std::pair<std::string, std::string>> keys = {
      {"model_type", "\"llama\""},        {"hidden_act", "\"silu\""},     {"hidden_size", "256"},
      {"num_hidden_layers", "4"},         {"num_attention_heads", "8"},   {"num_key_value_heads", "4"},
      {"intermediate_size", "688"},       {"vocab_size", "1000"}};
  bool first = true;
  for (const auto& [key, value] : keys) {
    if (key == replace_key && replace_value.empty()) {
      continue; // drop the key
    }
    text += (first ? "  \"" : ",\n  \"") + key + "\": " + (key == replace_key ? replace_value : value);
    first = false;
  }
  return text + "\n}\n";
}

struct BadCase {
  std::string label;
  std::string scenario_text;
  std::string side_file;          // optional second file (a model config) written next to the scenario
  std::string side_text;
  bool infeasible = false;        // InfeasibleError instead of InputError
  std::string file;               // file the message must name ("" = the scenario)
  std::vector<std::string> needles; // field path and bad value
};

std::vector<BadCase> bad_cases() {
  const std::string cfg = "model: cfg.config.json\ncluster: " + CLUSTER + "\nplan: " + PLAN + "\n";
  return {
      {"unknown top-level key", "modle: gpt-tiny\ncluster: " + CLUSTER + "\nplan: " + PLAN, "", "", false, "",
       {"modle", "did you mean 'model'?"}},
      {"unknown plan key", scenario(MODEL, CLUSTER, plan_with("tpp: 2")), "", "", false, "",
       {"plan.tpp", "'tpp'", "did you mean 'tp'?"}},
      {"string for int", scenario(MODEL, CLUSTER, plan_with("tp: two")), "", "", false, "", {"plan.tp", "two"}},
      {"negative tp", scenario(MODEL, CLUSTER, plan_with("tp: -2")), "", "", false, "", {"plan.tp", "-2"}},
      {"zero pp", scenario(MODEL, CLUSTER, plan_with("pp: 0")), "", "", false, "", {"plan.pp", "0"}},
      {"float for int", scenario(MODEL, CLUSTER, plan_with("tp: 2.5")), "", "", false, "", {"plan.tp", "2.5"}},
      {"quoted number", scenario(MODEL, CLUSTER, plan_with("dp: \"2\"")), "", "", false, "", {"plan.dp", "\"2\""}},
      {"NaN batch", scenario(MODEL, CLUSTER, "{tp: 2, global_batch_size: .nan}"), "", "", false, "",
       {"plan.global_batch_size", ".nan"}},
      {"inf bucket", scenario(MODEL, CLUSTER, plan_with("tp: 2, grad_bucket_bytes: .inf")), "", "", false, "",
       {"plan.grad_bucket_bytes", ".inf"}},
      {"duplicate key", scenario(MODEL, CLUSTER, plan_with("tp: 2, tp: 4")), "", "", false, "",
       {"plan.tp", "duplicate"}},
      {"bad schedule", scenario(MODEL, CLUSTER, plan_with("tp: 2, schedule: 1f1f")), "", "", false, "",
       {"plan.schedule", "'1f1f'", "did you mean '1f1b'?"}},
      {"bad recompute", scenario(MODEL, CLUSTER, plan_with("tp: 2, recompute: partial")), "", "", false, "",
       {"plan.recompute", "partial"}},
      {"bad precision", scenario(MODEL, CLUSTER, plan_with("tp: 2, precision: fp32")), "", "", false, "",
       {"plan.precision", "fp32"}},
      {"bad bool", scenario(MODEL, CLUSTER, plan_with("tp: 2, sequence_parallel: maybe")), "", "", false, "",
       {"plan.sequence_parallel", "maybe"}},
      {"unknown model", scenario("gpt3-175", CLUSTER, PLAN), "", "", false, "",
       {"model", "gpt3-175", "did you mean 'gpt3-175b'?"}},
      {"missing model file", scenario("missing.config.json", CLUSTER, PLAN), "", "", false, "",
       {"model", "missing.config.json"}},
      {"unknown model field", scenario("{base: gpt-tiny, num_layer: 6}", CLUSTER, PLAN), "", "", false, "",
       {"model.num_layer", "did you mean 'num_layers'?"}},
      {"negative model field", scenario("{base: gpt-tiny, num_layers: -4}", CLUSTER, PLAN), "", "", false, "",
       {"model.num_layers", "-4"}},
      {"heads vs groups", scenario("{base: llama-3.1-8b, num_query_groups: 5}", CLUSTER, PLAN), "", "", false, "",
       {"model.num_attention_heads", "32", "num_query_groups=5"}},
      {"bad norm", scenario("{base: gpt-tiny, norm: batchnorm}", CLUSTER, PLAN), "", "", false, "",
       {"model.norm", "batchnorm", "rmsnorm"}},
      {"malformed JSON", cfg, "cfg.config.json", "{ \"hidden_size\": 4096,", false, "cfg.config.json",
       {"invalid JSON"}},
      {"HF missing key", cfg, "cfg.config.json", llama_config("intermediate_size", ""), false, "cfg.config.json",
       {"intermediate_size", "missing"}},
      {"HF wrong type", cfg, "cfg.config.json", llama_config("hidden_size", "\"4096\""), false, "cfg.config.json",
       {"hidden_size", "\"4096\""}},
      {"HF zero", cfg, "cfg.config.json", llama_config("num_hidden_layers", "0"), false, "cfg.config.json",
       {"num_hidden_layers", "0"}},
      {"HF negative", cfg, "cfg.config.json", llama_config("vocab_size", "-5"), false, "cfg.config.json",
       {"vocab_size", "-5"}},
      {"HF float", cfg, "cfg.config.json", llama_config("num_attention_heads", "8.5"), false, "cfg.config.json",
       {"num_attention_heads", "8.5"}},
      {"HF model_type", cfg, "cfg.config.json", llama_config("model_type", "\"bert\""), false, "cfg.config.json",
       {"model_type", "bert"}},
      {"unknown system", scenario(MODEL, "{system: dgx-a1000, num_gpus: 4}", PLAN), "", "", false, "",
       {"cluster.system", "dgx-a1000", "did you mean 'dgx-a100'?"}},
      {"alias gpu", scenario(MODEL, "{gpu: h100, num_gpus: 4}", PLAN), "", "", false, "",
       {"cluster.gpu", "'h100'", "h100-sxm"}},
      {"zero gpus", scenario(MODEL, "{system: dgx-a100, num_gpus: 0}", PLAN), "", "", false, "",
       {"cluster.num_gpus", "0"}},
      {"partial nodes", scenario(MODEL, "{system: dgx-a100, num_gpus: 12}", PLAN), "", "", false, "",
       {"cluster.num_gpus", "12", "gpus_per_node = 8"}},
      {"bad bandwidth unit", scenario(MODEL, "{system: dgx-a100, num_gpus: 4, nic_bandwidth: 200 Gbs}", PLAN), "", "",
       false, "", {"cluster.nic_bandwidth", "\"Gbs\"", "Gb/s"}},
      {"bad latency unit", scenario(MODEL, "{system: dgx-a100, num_gpus: 4, net_latency: 5 sec}", PLAN), "", "",
       false, "", {"cluster.net_latency", "sec", "us"}},
      {"bad topology", scenario(MODEL, "{system: dgx-a100, num_gpus: 4, topology: torus}", PLAN), "", "", false, "",
       {"cluster.topology", "torus", "fat-tree"}},
      {"negative gpus_per_node", scenario(MODEL, "{system: dgx-a100, num_gpus: 4, gpus_per_node: -8}", PLAN), "", "",
       false, "", {"cluster.gpus_per_node", "-8"}},
      {"unknown cluster key", scenario(MODEL, "{system: dgx-a100, num_gpus: 4, nvlink_bw: 1}", PLAN), "", "", false,
       "", {"cluster.nvlink_bw", "did you mean 'nvlink_bandwidth'?"}},
      {"gpu vs system", scenario(MODEL, "{system: dgx-a100, gpu: h100-sxm, num_gpus: 4}", PLAN), "", "", false, "",
       {"cluster.gpu", "h100-sxm", "dgx-h100"}},
      {"world size", scenario(MODEL, "{system: dgx-a100, num_gpus: 8}", plan_with("tp: 2, pp: 2, dp: 3")), "", "",
       true, "", {"plan", "tp*pp*dp = 2*2*3 = 12 != num_gpus = 8"}},
      {"tp vs heads", scenario(MODEL, "{system: dgx-a100, num_gpus: 3}", plan_with("tp: 3")), "", "", true, "",
       {"plan.tp", "3 does not divide num_attention_heads = 8"}},
      {"dp not inferable", scenario(MODEL, "{system: dgx-a100, num_gpus: 8}", plan_with("tp: 3")), "", "", true, "",
       {"plan.dp", "num_gpus = 8", "tp*pp = 3*1 = 3"}},
      {"batch divide", scenario(MODEL, "{system: dgx-a100, num_gpus: 2}", "{dp: 2, global_batch_size: 7}"), "", "",
       true, "", {"plan.global_batch_size", "7", "micro_batch_size*dp = 1*2 = 2"}},
      {"pp vs layers", scenario(MODEL, "{system: dgx-a100, num_gpus: 3}", plan_with("pp: 3")), "", "", true, "",
       {"plan.pp", "3 does not divide num_layers = 4"}},
      {"vp without interleaved", scenario(MODEL, CLUSTER, plan_with("pp: 2, dp: 2, vp: 2, schedule: 1f1b")), "", "",
       false, "", {"plan.vp", "2", "interleaved"}},
      {"fp8 on A100", scenario(MODEL, CLUSTER, plan_with("tp: 2, precision: fp8")), "", "", true, "",
       {"plan.precision", "fp8", "a100-80gb"}},
      {"missing plan", "model: gpt-tiny\ncluster: " + CLUSTER + "\n", "", "", false, "", {"plan", "missing"}},
      {"plan not a mapping", scenario(MODEL, CLUSTER, "5"), "", "", false, "", {"plan", "5", "mapping"}},
      {"YAML syntax", "model: gpt-tiny\nplan: {tp: 2\n", "", "", false, "", {"invalid YAML"}},
  };
}
} // namespace

TEST_CASE("model::load_scenario: the shipped examples load and validate", "[spec]") {
  SECTION("the four DP/TP/PP examples on gpt-tiny") {
    const auto [file, tp, pp, dp] = GENERATE(table<std::string, int, int, int>(
        {{"single.yaml", 1, 1, 1}, {"dp2.yaml", 1, 1, 2}, {"dp2-tp2.yaml", 2, 1, 2}, {"dp2-tp2-pp2.yaml", 2, 2, 2}}));
    CAPTURE(file);
    const Scenario loaded = load_scenario(EXAMPLES + file);
    REQUIRE(loaded.model.name == "gpt-tiny");
    REQUIRE(loaded.cluster.name == "dgx-a100");
    REQUIRE(loaded.cluster.num_gpus == tp * pp * dp);
    REQUIRE((loaded.plan.tp == tp && loaded.plan.pp == pp && loaded.plan.dp == dp));
    REQUIRE(loaded.plan.micro_batch_size == 1);
  }
  SECTION("GPT-3 175B on 1024 A100s: TP8 PP16 DP8, 192 micro-batches") {
    const Scenario loaded = load_scenario(EXAMPLES + "gpt3-175b-1024-a100.yaml");
    REQUIRE(loaded.cluster.num_nodes() == 128);
    REQUIRE(loaded.plan.num_microbatches() == 192);
    REQUIRE(loaded.plan.recompute == Recompute::Selective);
    REQUIRE(layers_per_stage(loaded.plan, loaded.model.num_layers) == std::vector<int>(16, 6));
  }
}

TEST_CASE("model::load_scenario: model forms, dp inference and cluster overrides", "[spec]") {
  const TempDir dir;
  SECTION("dp defaults to num_gpus / (tp*pp); vp > 1 implies interleaved") {
    const Scenario loaded = load_scenario(dir.write(
        "s.yaml", scenario(MODEL, "{system: dgx-a100, num_gpus: 8}", plan_with("tp: 2, pp: 2, vp: 2"))));
    REQUIRE(loaded.plan.dp == 2);
    REQUIRE(loaded.plan.schedule == Schedule::Interleaved);
  }
  SECTION("a mapping with base and overrides") {
    const Scenario loaded = load_scenario(
        dir.write("s.yaml", scenario("{base: llama-3.1-8b, num_layers: 4, seq_length: 2048}",
                                     "{gpu: h100-sxm, num_gpus: 8}", plan_with("tp: 8"))));
    REQUIRE(loaded.model.num_layers == 4);
    REQUIRE(loaded.model.seq_length == 2048);
    REQUIRE(loaded.model.num_query_groups == 8);
    REQUIRE(loaded.cluster.name == "dgx-h100");
  }
  SECTION("a config.json path relative to the scenario file") {
    dir.write("cfg.config.json", llama_config("", ""));
    const Scenario loaded = load_scenario(dir.write("s.yaml", scenario("cfg.config.json", CLUSTER, PLAN)));
    REQUIRE(loaded.model.name == "cfg");
    REQUIRE(loaded.model.num_query_groups == 4);
  }
  SECTION("link overrides with units are applied and reported") {
    const Scenario loaded = load_scenario(dir.write(
        "s.yaml", scenario(MODEL,
                           "{system: dgx-a100, num_gpus: 4, nvlink_bandwidth: 150 GB/s, nic_bandwidth: 100 Gb/s, "
                           "net_latency: 2 us, topology: fat-tree}",
                           PLAN)));
    REQUIRE(loaded.cluster.nvlink_bw_bytes_per_s == 150e9);
    REQUIRE(loaded.cluster.nic_bw_bytes_per_s == 12.5e9);
    REQUIRE(loaded.cluster.net_latency_s == Approx(2e-6));
    REQUIRE(loaded.cluster.topology == Topology::FatTree);
    REQUIRE(std::any_of(loaded.cluster.assumptions.begin(), loaded.cluster.assumptions.end(),
                        [](const std::string& line) { return line.find("cluster.nic_bandwidth = 100 Gb/s") == 0; }));
  }
  SECTION("a YAML model file through load_model") {
    const std::string path = dir.write("my-model.yaml", "family: llama\nnum_layers: 2\nhidden_size: 256\n"
                                                        "num_attention_heads: 4\nffn_hidden_size: 688\n"
                                                        "vocab_size: 1000\nseq_length: 512\n");
    const ModelSpec spec = load_model(path);
    REQUIRE(spec.name == "my-model");
    REQUIRE(spec.gated_mlp);
    REQUIRE(spec.head_dim == 64);
    REQUIRE_THROWS_WITH(load_model(dir.write("m.yaml", "hidden_size: 256\nhiden: 3\n")),
                        Contains("m.yaml: hiden: unknown key 'hiden'") && Contains("did you mean 'hidden_size'?"));
  }
}

TEST_CASE("model::load_scenario: bad inputs name the file, the field and the value", "[spec]") {
  const std::vector<BadCase> cases = bad_cases();
  REQUIRE(cases.size() >= 25);
  for (std::size_t case_idx = 0; case_idx < cases.size(); ++case_idx) {
    const BadCase& bad = cases[case_idx];
    CAPTURE(bad.label);
    const TempDir dir;
    if (!bad.side_file.empty()) {
      dir.write(bad.side_file, bad.side_text);
    }
    const std::string file_name = "case" + std::to_string(case_idx) + ".yaml";
    const std::string path = dir.write(file_name, bad.scenario_text);
    if (bad.infeasible) {
      REQUIRE_THROWS_AS(load_scenario(path), InfeasibleError);
    } else {
      REQUIRE_THROWS_AS(load_scenario(path), InputError);
    }
    std::string message;
    bool right_type = false;
    try {
      (void)load_scenario(path);
    } catch (const InfeasibleError& error) {
      message = error.what();
      right_type = bad.infeasible;
    } catch (const InputError& error) {
      message = error.what();
      right_type = !bad.infeasible;
    }
    CAPTURE(message);
    REQUIRE(!message.empty());
    REQUIRE(right_type);
    REQUIRE_THAT(message, Contains(bad.file.empty() ? file_name : bad.file));
    for (const auto& needle : bad.needles) {
      REQUIRE_THAT(message, Contains(needle));
    }
  }
}
