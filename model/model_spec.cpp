// Parameter counts and validation of ModelSpec. The counts are exact for the two families cuboid models:
// GPT (Megatron-LM GPTModel: LayerNorm with bias, biased linears, learned positions, GeLU MLP) and Llama (RMSNorm,
// no biases, RoPE, SwiGLU, GQA). Oracles: scenarios/models/SOURCES.md and Narayanan et al. SC21 Table 1.
#include "model/model_spec.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <string_view>
#include <utility>

namespace cuboid::model {

namespace {
// One MLP C -> F -> C: GeLU uses 2 matrices; SwiGLU adds the gate C -> F (3 matrices, Shazeer 2020).
double mlp_parameters(double c, double f, bool gated, bool linear_bias) {
  const double bias = linear_bias ? 1.0 : 0.0;
  const double up_matrices = gated ? 2.0 : 1.0;
  return up_matrices * (c * f + bias * f) + f * c + bias * c;
}
} // namespace

double ModelSpec::layer_parameters() const {
  const auto c = static_cast<double>(hidden_size);
  const auto q = static_cast<double>(q_width());
  const auto kv = static_cast<double>(kv_width());
  const double bias = linear_bias ? 1.0 : 0.0;
  // One norm weight per channel, plus a bias for LayerNorm; two norms per layer (pre-attention, pre-MLP).
  const double norm_params = norm == NormKind::LayerNorm ? 2.0 * c : c;
  // Attention: fused QKV (C -> q + 2 kv, GQA K/V are num_query_groups * head_dim wide) and output projection q -> C.
  const double attention = c * (q + 2.0 * kv) + bias * (q + 2.0 * kv) + q * c + bias * c;
  const double mlp = mlp_parameters(c, static_cast<double>(ffn_hidden_size), gated_mlp, linear_bias);
  return 2.0 * norm_params + attention + mlp;
}

double ModelSpec::expert_parameters() const {
  return mlp_parameters(static_cast<double>(hidden_size), static_cast<double>(moe_ffn_hidden_size), gated_mlp,
                        linear_bias);
}

// A MoE layer = the dense layer without its MLP + router (C x E, no bias: Mixtral's `gate`, DeepSeek's `gate.weight`)
// + (E + shared) experts. Mixtral-8x7B: 32 x (41.94M attention + 8 x 176.16M + 32,768 router + 8,192 norms) + 2 x
// 131.07M embeddings = 46.70B total, 12.88B active (scenarios/models/SOURCES.md; Mistral AI, "Mixtral of experts",
// 2023-12-11: 46.7B total, 12.9B active parameters).
double ModelSpec::moe_layer_parameters() const {
  const double without_mlp =
      layer_parameters() - mlp_parameters(static_cast<double>(hidden_size), static_cast<double>(ffn_hidden_size),
                                          gated_mlp, linear_bias);
  const double router = static_cast<double>(hidden_size) * static_cast<double>(num_experts);
  return without_mlp + router + static_cast<double>(num_experts + num_shared_experts) * expert_parameters();
}

double ModelSpec::active_parameters() const {
  const double idle_experts = static_cast<double>(num_experts - moe_top_k) * expert_parameters();
  return num_parameters() - static_cast<double>(num_moe_layers()) * idle_experts;
}

double ModelSpec::num_parameters() const {
  const auto c = static_cast<double>(hidden_size);
  const auto v = static_cast<double>(vocab_size);
  const double embedding = v * c + (learned_position_embedding ? static_cast<double>(seq_length) * c : 0.0);
  const double final_norm = norm == NormKind::LayerNorm ? 2.0 * c : c;
  const double output = tied_embeddings ? 0.0 : v * c;
  // GPT-3 175B check (Narayanan et al. SC21 eq. 2, tied): 96*(12h^2 + 13h) + (V + s)h + 2h = 174.6e9 for h=12288.
  const auto moe_layers = static_cast<double>(num_moe_layers());
  const double layers = (static_cast<double>(num_layers) - moe_layers) * layer_parameters() +
                        (moe_layers > 0.0 ? moe_layers * moe_layer_parameters() : 0.0);
  return layers + embedding + final_norm + output;
}

void validate(const ModelSpec& spec, const std::string& where) { validate(spec, where, ""); }

namespace {
// --- mixture of experts ---
// Bounded like the other sizes: the largest published MoE models route over 256 (DeepSeek-V3) to a few thousand
// experts; 1 << 16 keeps per-expert loops and E * C products far from overflow.
constexpr std::int64_t MAX_EXPERTS = 1 << 16;
constexpr std::int64_t MAX_MOE_FFN = 1 << 30; // as MAX_SIZE for the dense sizes

template <typename Field>
void validate_moe(const ModelSpec& spec, const std::string& where, const Field& field) {
  const std::pair<const char*, std::int64_t> counts[] = {{"num_experts", spec.num_experts},
                                                         {"moe_top_k", spec.moe_top_k},
                                                         {"moe_ffn_hidden_size", spec.moe_ffn_hidden_size},
                                                         {"num_shared_experts", spec.num_shared_experts},
                                                         {"first_k_dense_layers", spec.first_k_dense_layers}};
  for (const auto& [name, value] : counts) {
    const std::int64_t limit = std::string_view(name) == "moe_ffn_hidden_size" ? MAX_MOE_FFN : MAX_EXPERTS;
    if (value < 0 || value > limit) {
      throw InputError(input_message(where, field(name),
                                     fmt::format("{} is not valid (expected an integer from 0 to {})", value, limit)));
    }
  }
  if (!spec.is_moe()) {
    for (const auto& [name, value] : counts) {
      if (value != 0) {
        throw InputError(input_message(where, field(name),
                                       fmt::format("{} is set but num_experts is 0 (a dense model: set num_experts "
                                                   "to make it a mixture of experts)",
                                                   value)));
      }
    }
    return;
  }
  if (spec.moe_top_k < 1 || spec.moe_top_k > spec.num_experts) {
    throw InputError(input_message(where, field("moe_top_k"),
                                   fmt::format("{} is not valid (expected 1 to num_experts = {} experts per token)",
                                               spec.moe_top_k, spec.num_experts)));
  }
  if (spec.moe_ffn_hidden_size < 1) {
    throw InputError(input_message(where, field("moe_ffn_hidden_size"),
                                   fmt::format("{} is not valid (expected a positive integer for a MoE model)",
                                               spec.moe_ffn_hidden_size)));
  }
  if (spec.first_k_dense_layers >= spec.num_layers) {
    throw InputError(input_message(where, field("first_k_dense_layers"),
                                   fmt::format("{} is not valid (expected 0 to num_layers - 1 = {}: at least one "
                                               "layer must be a MoE layer)",
                                               spec.first_k_dense_layers, spec.num_layers - 1)));
  }
}
} // namespace

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
  validate_moe(spec, where, field);
}

} // namespace cuboid::model
