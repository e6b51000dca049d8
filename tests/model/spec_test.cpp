// ModelSpec parameter counts against published numbers, and ModelSpec validation messages.
#include "model/errors.hpp"
#include "model/model_catalog.hpp"
#include "model/model_spec.hpp"

#include <catch2/catch.hpp>

#include <string>

using cuboid::InputError;
using cuboid::model::find_model;
using cuboid::model::ModelSpec;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
constexpr double BILLION = 1e9;
} // namespace

// Oracle: scenarios/models/SOURCES.md, computed from the HF configs (untied unless tie_word_embeddings, SwiGLU = 3
// matrices, GQA K/V = num_key_value_heads*head_dim, RMSNorm weights). Printed to 3 decimals: 0.05 % tolerance.
TEST_CASE("model::ModelSpec: Llama 3.x parameter counts match SOURCES.md", "[spec]") {
  const auto [name, billions] = GENERATE(table<std::string, double>({{"llama-3.1-8b", 8.030},
                                                                     {"llama-3.2-3b", 3.213},
                                                                     {"llama-3-70b", 70.554},
                                                                     {"llama-3.1-405b", 405.853}}));
  CAPTURE(name);
  REQUIRE_THAT(find_model(name).num_parameters() / BILLION, WithinRel(billions, 5e-4));
}

// Oracle: Narayanan et al. SC21 Table 1 (GPT layout, tied embeddings, V=51200, s=2048): 529.6B and 1008.0B; GPT-3
// 175B is not in the table, its eq. 2 gives 174.6B. Printed to 1 decimal: 0.05 % tolerance.
TEST_CASE("model::ModelSpec: Megatron GPT parameter counts match SC21 Table 1", "[spec]") {
  REQUIRE_THAT(find_model("megatron-530b").num_parameters() / BILLION, WithinRel(529.6, 5e-4));
  REQUIRE_THAT(find_model("megatron-1t").num_parameters() / BILLION, WithinRel(1008.0, 5e-4));
  // SC21 eq. 2: P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12lh)); our exact count adds only the final LayerNorm (2h).
  const ModelSpec gpt3 = find_model("gpt3-175b");
  const double l = 96.0;
  const double h = 12288.0;
  const double eq2 = 12.0 * l * h * h * (1.0 + 13.0 / (12.0 * h) + (51200.0 + 2048.0) / (12.0 * l * h));
  REQUIRE_THAT(gpt3.num_parameters(), WithinRel(eq2 + 2.0 * h, 1e-12));
  REQUIRE_THAT(gpt3.num_parameters() / BILLION, WithinRel(174.6, 5e-4));
}

// Oracle: Brown et al. 2020 Table 2.1 names (1.3B, 2.7B, 6.7B, 13.0B) are rounded and use V=50257: 2 % tolerance.
TEST_CASE("model::ModelSpec: GPT-3 family sizes match Brown et al. Table 2.1", "[spec]") {
  const auto [name, billions] = GENERATE(table<std::string, double>(
      {{"gpt3-1.3b", 1.3}, {"gpt3-2.7b", 2.7}, {"gpt3-6.7b", 6.7}, {"gpt3-13b", 13.0}}));
  CAPTURE(name);
  REQUIRE_THAT(find_model(name).num_parameters() / BILLION, WithinRel(billions, 0.02));
}

TEST_CASE("model::ModelSpec: layer parameters by hand", "[spec]") {
  SECTION("GPT layer = 12C^2 + 13C for F = 4C (LayerNorm weight+bias, biased linears)") {
    const ModelSpec tiny = find_model("gpt-tiny");
    const double c = 128.0;
    REQUIRE(tiny.layer_parameters() == 12.0 * c * c + 13.0 * c);
    // 4 layers + tied (V + T) x C embeddings + final LayerNorm: 4*198272 + (512+128)*128 + 256 = 875,264.
    REQUIRE(tiny.num_parameters() == 875264.0);
  }
  SECTION("Llama layer: GQA QKV, SwiGLU 3 matrices, 2 RMSNorm weights, no biases") {
    const ModelSpec llama = find_model("llama-3.1-8b");
    const double c = 4096.0;
    const double attention = c * (4096.0 + 2.0 * 8.0 * 128.0) + 4096.0 * c;
    const double mlp = 3.0 * c * 14336.0;
    REQUIRE(llama.layer_parameters() == attention + mlp + 2.0 * c);
    REQUIRE(llama.kv_width() == 1024);
    REQUIRE(llama.q_width() == 4096);
  }
  SECTION("tying removes exactly V*C") {
    ModelSpec untied = find_model("llama-3.2-3b");
    REQUIRE(untied.tied_embeddings);
    const double tied_count = untied.num_parameters();
    untied.tied_embeddings = false;
    REQUIRE(untied.num_parameters() - tied_count == 128256.0 * 3072.0);
  }
}

TEST_CASE("model::validate(ModelSpec): messages name where, field, value and what is valid", "[spec]") {
  ModelSpec spec = find_model("llama-3.1-8b");
  SECTION("heads not divisible by query groups") {
    spec.num_query_groups = 5;
    REQUIRE_THROWS_AS(validate(spec, "llama.yaml"), InputError);
    REQUIRE_THROWS_WITH(validate(spec, "llama.yaml"),
                        Contains("llama.yaml: num_attention_heads: 32 is not divisible by num_query_groups=5"));
  }
  SECTION("non-positive sizes") {
    spec.hidden_size = 0;
    REQUIRE_THROWS_WITH(validate(spec, "m.yaml"), Contains("m.yaml: hidden_size: 0 is not valid (expected a positive"));
    spec.hidden_size = 4096;
    spec.seq_length = -8;
    REQUIRE_THROWS_WITH(validate(spec, "m.yaml", "model."), Contains("m.yaml: model.seq_length: -8"));
  }
  SECTION("every catalog entry is valid and cites a source") {
    for (const auto& entry : cuboid::model::builtin_models()) {
      CAPTURE(entry.name);
      REQUIRE_NOTHROW(validate(entry, "catalog"));
      REQUIRE(!entry.source.empty());
    }
  }
}
