// Model, GPU and system catalogs: lookups with did-you-mean, Hugging Face config loading, clusters, unit parsing.
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <string>

using cuboid::InfeasibleError;
using cuboid::InputError;
using namespace cuboid::model;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
const std::string MODELS_DIR = std::string(CUBOID_SOURCE_DIR) + "/scenarios/models/";

void require_same_architecture(const ModelSpec& a, const ModelSpec& b) {
  REQUIRE(a.num_layers == b.num_layers);
  REQUIRE(a.hidden_size == b.hidden_size);
  REQUIRE(a.num_attention_heads == b.num_attention_heads);
  REQUIRE(a.num_query_groups == b.num_query_groups);
  REQUIRE(a.head_dim == b.head_dim);
  REQUIRE(a.ffn_hidden_size == b.ffn_hidden_size);
  REQUIRE(a.vocab_size == b.vocab_size);
  REQUIRE(a.gated_mlp == b.gated_mlp);
  REQUIRE(a.tied_embeddings == b.tied_embeddings);
  REQUIRE(a.norm == b.norm);
  REQUIRE(a.linear_bias == b.linear_bias);
  REQUIRE(a.learned_position_embedding == b.learned_position_embedding);
}
} // namespace

TEST_CASE("model::find_model: exact names, did-you-mean on typos", "[spec]") {
  const std::vector<std::string> names = builtin_model_names();
  for (const char* name : {"gpt-tiny", "gpt3-175b", "megatron-530b", "megatron-1t", "gpt3-1.3b", "gpt3-2.7b",
                           "gpt3-6.7b", "gpt3-13b", "llama-3.1-8b", "llama-3-70b", "llama-3.1-405b", "llama-3.2-3b"}) {
    CAPTURE(name);
    REQUIRE(find_model(name).name == name);
  }
  REQUIRE_THROWS_AS(find_model("gpt3-175"), InputError);
  REQUIRE_THROWS_WITH(find_model("gpt3-175"), Contains("command line: --model: unknown model 'gpt3-175'") &&
                                                  Contains("did you mean 'gpt3-175b'?") && Contains("llama-3.1-8b"));
  REQUIRE_THROWS_WITH(find_model("Llama-3.1-8B", "s.yaml", "model"), Contains("s.yaml: model: unknown model"));
}

TEST_CASE("model::load_model: the shipped HF configs equal the catalog entries", "[spec]") {
  const std::string name = GENERATE("llama-3.1-8b", "llama-3.2-3b", "llama-3-70b", "llama-3.1-405b");
  CAPTURE(name);
  const ModelSpec loaded = load_model(MODELS_DIR + name + ".config.json");
  REQUIRE(loaded.name == name);
  require_same_architecture(loaded, find_model(name));
  // max_position_embeddings (131072 / 8192) is an inference context, not a training length.
  REQUIRE(loaded.seq_length == HF_DEFAULT_SEQ_LENGTH);
  REQUIRE_THAT(loaded.source, Contains("not max_position_embeddings"));
}

TEST_CASE("model::model_from_hf_config: defaults, GPT-2 keys and refusals", "[spec]") {
  nlohmann::json llama = {{"model_type", "llama"},      {"hidden_act", "silu"},   {"hidden_size", 256},
                          {"num_hidden_layers", 2},     {"num_attention_heads", 4}, {"intermediate_size", 688},
                          {"vocab_size", 1000}};
  SECTION("num_key_value_heads defaults to the heads, head_dim to hidden/heads, untied") {
    const ModelSpec spec = model_from_hf_config(llama, "dir/tiny.config.json");
    REQUIRE(spec.name == "tiny");
    REQUIRE(spec.num_query_groups == 4);
    REQUIRE(spec.head_dim == 64);
    REQUIRE(!spec.tied_embeddings);
    REQUIRE(spec.gated_mlp);
    REQUIRE(spec.norm == NormKind::RmsNorm);
  }
  SECTION("GPT-2 style keys") {
    const nlohmann::json gpt2 = {{"model_type", "gpt2"}, {"n_layer", 12}, {"n_embd", 768},   {"n_head", 12},
                                 {"n_positions", 1024},  {"n_inner", nullptr}, {"vocab_size", 50257}};
    const ModelSpec spec = model_from_hf_config(gpt2, "gpt2.json");
    REQUIRE(spec.ffn_hidden_size == 3072);
    REQUIRE(spec.tied_embeddings);
    REQUIRE(spec.seq_length == 1024);
    REQUIRE(spec.learned_position_embedding);
    // GPT-2 small: 124.4M parameters (tied, 1024 positions).
    REQUIRE_THAT(spec.num_parameters(), WithinRel(124439808.0, 1e-12));
  }
  SECTION("mixture-of-experts configs need the experts per token") {
    llama["num_local_experts"] = 8;
    REQUIRE_THROWS_WITH(model_from_hf_config(llama, "mixtral.json"),
                        Contains("mixtral.json: num_experts_per_tok: missing required key"));
    llama["num_experts_per_tok"] = 2;
    REQUIRE(model_from_hf_config(llama, "mixtral.json").num_experts == 8);
  }
  SECTION("wrong activation") {
    llama["hidden_act"] = "gelu";
    REQUIRE_THROWS_WITH(model_from_hf_config(llama, "c.json"), Contains("c.json: hidden_act: 'gelu'"));
  }
}

TEST_CASE("model::find_gpu and systems: catalog values and sources", "[spec]") {
  const GpuSpec a100 = find_gpu("a100-80gb", "test");
  REQUIRE(a100.peak_flops_per_s(Precision::Bf16) == 312e12);
  REQUIRE(a100.hbm_bytes == 80e9);
  REQUIRE(a100.power_w == 400.0);
  REQUIRE_THROWS_AS(a100.peak_flops_per_s(Precision::Fp8), InfeasibleError);
  const GpuSpec h100 = find_gpu("h100-sxm", "test");
  REQUIRE(h100.peak_flops_per_s(Precision::Fp8) == 1979e12);
  REQUIRE(h100.nvlink_bw_bytes_per_s == 450e9);
  REQUIRE(h100.power_w == 700.0);
  REQUIRE(find_gpu("b200", "test").power_w == 1000.0);
  REQUIRE(find_gpu("gb200", "test").power_w == 1200.0);
  for (const auto& gpu : builtin_gpus()) {
    REQUIRE(!gpu.source.empty());
  }
  // No aliases: "h100" is not a GPU, but the hint points at the H100 rather than the nearer-by-edits h200.
  REQUIRE_THROWS_WITH(find_gpu("h100", "c.yaml"),
                      Contains("c.yaml: gpu: unknown GPU 'h100'") && Contains("did you mean 'h100-sxm'?"));
  REQUIRE(default_system_for_gpu("a100-80gb") == "dgx-a100");
  REQUIRE(default_system_for_gpu("a100-40gb") == "dgx-a100-40gb");
  REQUIRE(default_system_for_gpu("h100-sxm") == "dgx-h100");
  REQUIRE(default_system_for_gpu("h200") == "dgx-h200");
  REQUIRE(default_system_for_gpu("b200") == "dgx-b200");
  REQUIRE_THROWS_WITH(find_system("dgx-a10", "c.yaml"), Contains("did you mean 'dgx-a100'?"));
  for (const auto& system : builtin_systems()) {
    CAPTURE(system.name);
    REQUIRE(!system.source.empty());
    REQUIRE(!system.assumptions.empty());
    REQUIRE_NOTHROW(find_gpu(system.gpu, "catalog"));
  }
}

TEST_CASE("model::make_cluster: DGX numbers and bad sizes", "[spec]") {
  SECTION("dgx-a100: 8x HDR 200 Gb/s = 25 GB/s per GPU, NVLink3 300 GB/s per direction") {
    const ClusterSpec cluster = make_cluster("dgx-a100", 64, 0, "test");
    REQUIRE(cluster.name == "dgx-a100");
    REQUIRE(cluster.gpu.name == "a100-80gb");
    REQUIRE(cluster.num_nodes() == 8);
    REQUIRE(cluster.nic_bw_bytes_per_s == 25e9);
    REQUIRE(cluster.nvlink_bw_bytes_per_s == 300e9);
    REQUIRE(cluster.topology == Topology::RailOptimized);
    REQUIRE_THAT(cluster.assumptions.front(), Contains("(assumed)"));
  }
  SECTION("a GPU name picks its DGX; NDR 400 Gb/s = 50 GB/s") {
    const ClusterSpec cluster = make_cluster("h100-sxm", 16, 0, "test");
    REQUIRE(cluster.name == "dgx-h100");
    REQUIRE(cluster.nic_bw_bytes_per_s == 50e9);
    REQUIRE(make_cluster("b200", 8, 0, "test").nvlink_bw_bytes_per_s == 900e9);
  }
  SECTION("partial node and gpus_per_node override") {
    REQUIRE(make_cluster("dgx-a100", 2, 0, "test").num_nodes() == 1);
    const ClusterSpec four = make_cluster("dgx-a100", 8, 4, "test");
    REQUIRE(four.num_nodes() == 2);
    REQUIRE_THAT(four.assumptions.back(), Contains("4 GPUs per node instead of dgx-a100's 8"));
  }
  SECTION("errors") {
    REQUIRE_THROWS_WITH(make_cluster("dgx-a100", 0, 0, "x.yaml"), Contains("x.yaml: num_gpus: 0 is not valid"));
    REQUIRE_THROWS_WITH(make_cluster("dgx-a100", 12, 0, "x.yaml"),
                        Contains("num_gpus: 12 is not a multiple of gpus_per_node = 8"));
    REQUIRE_THROWS_WITH(make_cluster("dgx-a100", 8, -1, "x.yaml"), Contains("gpus_per_node: -1"));
    REQUIRE_THROWS_WITH(make_cluster("h100", 8, 0, "command line"),
                        Contains("unknown GPU or system 'h100'") && Contains("did you mean 'h100-sxm'?"));
  }
}

TEST_CASE("model::parse_bandwidth / parse_duration: units to SI", "[spec]") {
  REQUIRE(parse_bandwidth("300 GB/s", "c", "f") == 300e9);
  REQUIRE(parse_bandwidth("200 Gb/s", "c", "f") == 25e9);
  REQUIRE(parse_bandwidth("1.5TB/s", "c", "f") == 1.5e12);
  REQUIRE(parse_bandwidth(" 64 KB/s ", "c", "f") == 64e3);
  REQUIRE(parse_bandwidth("10 MB/s", "c", "f") == 10e6);
  REQUIRE(parse_bandwidth("8 B/s", "c", "f") == 8.0);
  REQUIRE_THAT(parse_duration("5 us", "c", "f"), WithinRel(5e-6, 1e-12));
  REQUIRE_THAT(parse_duration("3us", "c", "f"), WithinRel(3e-6, 1e-12));
  REQUIRE_THAT(parse_duration("0.5 ms", "c", "f"), WithinRel(5e-4, 1e-12));
  REQUIRE_THAT(parse_duration("700 ns", "c", "f"), WithinRel(7e-7, 1e-12));
  REQUIRE(parse_duration("0 s", "c", "f") == 0.0);
  REQUIRE_THROWS_WITH(parse_bandwidth("200 Gbs", "cluster.yaml", "cluster.nic_bandwidth"),
                      "cluster.yaml: cluster.nic_bandwidth: unknown unit \"Gbs\" in \"200 Gbs\" (expected B/s, KB/s, "
                      "MB/s, GB/s, Gb/s, TB/s)");
  REQUIRE_THROWS_AS(parse_bandwidth("300", "c", "f"), InputError);
  REQUIRE_THROWS_AS(parse_bandwidth("0 GB/s", "c", "f"), InputError);
  REQUIRE_THROWS_AS(parse_bandwidth("nan GB/s", "c", "f"), InputError);
  REQUIRE_THROWS_AS(parse_bandwidth("-3 GB/s", "c", "f"), InputError);
  REQUIRE_THROWS_AS(parse_duration("5 sec", "c", "f"), InputError);
  REQUIRE_THROWS_AS(parse_duration("inf us", "c", "f"), InputError);
}
