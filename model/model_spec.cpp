// Parameter counts and validation of ModelSpec. The counts are exact for the two families cuboid models:
// GPT (Megatron-LM GPTModel: LayerNorm with bias, biased linears, learned positions, GeLU MLP) and Llama (RMSNorm,
// no biases, RoPE, SwiGLU, GQA). Oracles: scenarios/models/SOURCES.md and Narayanan et al. SC21 Table 1.
#include "model/model_spec.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <string_view>
#include <utility>

namespace cuboid::model {

double ModelSpec::layer_parameters() const {
  const auto c = static_cast<double>(hidden_size);
  const auto f = static_cast<double>(ffn_hidden_size);
  const auto q = static_cast<double>(q_width());
  const auto kv = static_cast<double>(kv_width());
  const double bias = linear_bias ? 1.0 : 0.0;
  // One norm weight per channel, plus a bias for LayerNorm; two norms per layer (pre-attention, pre-MLP).
  const double norm_params = norm == NormKind::LayerNorm ? 2.0 * c : c;
  // Attention: fused QKV (C -> q + 2 kv, GQA K/V are num_query_groups * head_dim wide) and output projection q -> C.
  const double attention = c * (q + 2.0 * kv) + bias * (q + 2.0 * kv) + q * c + bias * c;
  // MLP: GeLU uses C -> F -> C (2 matrices); SwiGLU adds the gate C -> F (3 matrices, Shazeer 2020).
  const double up_matrices = gated_mlp ? 2.0 : 1.0;
  const double mlp = up_matrices * (c * f + bias * f) + f * c + bias * c;
  return 2.0 * norm_params + attention + mlp;
}

double ModelSpec::num_parameters() const {
  const auto c = static_cast<double>(hidden_size);
  const auto v = static_cast<double>(vocab_size);
  const double embedding = v * c + (learned_position_embedding ? static_cast<double>(seq_length) * c : 0.0);
  const double final_norm = norm == NormKind::LayerNorm ? 2.0 * c : c;
  const double output = tied_embeddings ? 0.0 : v * c;
  // GPT-3 175B check (Narayanan et al. SC21 eq. 2, tied): 96*(12h^2 + 13h) + (V + s)h + 2h = 174.6e9 for h=12288.
  return static_cast<double>(num_layers) * layer_parameters() + embedding + final_norm + output;
}

void validate(const ModelSpec& spec, const std::string& where) { validate(spec, where, ""); }

void validate(const ModelSpec& spec, const std::string& where, const std::string& field_prefix) {
  const auto field = [&](const char* name) { return field_prefix.empty() ? std::string(name) : field_prefix + name; };
  const std::pair<const char*, std::int64_t> sizes[] = {
      {"num_layers", spec.num_layers},         {"hidden_size", spec.hidden_size},
      {"num_attention_heads", spec.num_attention_heads}, {"num_query_groups", spec.num_query_groups},
      {"head_dim", spec.head_dim},             {"ffn_hidden_size", spec.ffn_hidden_size},
      {"vocab_size", spec.vocab_size},         {"seq_length", spec.seq_length},
  };
  // Bounded resources: sizes far beyond any real model (the largest have ~200 layers, hidden 3e4, vocab 3e5) are
  // rejected before anything is allocated per layer or multiplied in 64-bit integers.
  constexpr std::int64_t MAX_LAYERS = 1 << 16;
  constexpr std::int64_t MAX_SIZE = 1 << 30;
  for (const auto& [name, value] : sizes) {
    if (value <= 0) {
      throw InputError(input_message(where, field(name),
                                     fmt::format("{} is not valid (expected a positive integer)", value)));
    }
    const std::int64_t limit = std::string_view(name) == "num_layers" ? MAX_LAYERS : MAX_SIZE;
    if (value > limit) {
      throw InputError(input_message(where, field(name), fmt::format("{} is too large (at most {})", value, limit)));
    }
  }
  if (spec.num_attention_heads % spec.num_query_groups != 0) {
    throw InputError(input_message(
        where, field("num_attention_heads"),
        fmt::format("{} is not divisible by num_query_groups={} (num_query_groups must divide the heads: GQA shares "
                    "each K/V head among heads/groups query heads)",
                    spec.num_attention_heads, spec.num_query_groups)));
  }
}

} // namespace cuboid::model
