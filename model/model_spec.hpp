// ModelSpec: the architecture of a decoder-only transformer (GPT, Llama, ...), as far as cost and memory need it.
// Loaded from the built-in catalog (model_catalog.hpp), a Hugging Face config.json or a YAML file.
#pragma once

#include <cstdint>
#include <string>

namespace cuboid::model {

enum class NormKind { LayerNorm, RmsNorm };

struct ModelSpec {
  std::string name;             // catalog name or file stem, e.g. "gpt3-175b"
  std::string source;           // where the numbers come from (paper, config file)
  std::int64_t num_layers = 0;  // L
  std::int64_t hidden_size = 0; // C (h in Megatron papers)
  std::int64_t num_attention_heads = 0;
  std::int64_t num_query_groups = 0;   // KV heads (GQA); == num_attention_heads for classic MHA
  std::int64_t head_dim = 0;           // usually hidden/heads; Qwen3 differs
  std::int64_t ffn_hidden_size = 0;    // F; 4C for GPT-3
  std::int64_t vocab_size = 0;         // V (padded as the source states)
  std::int64_t seq_length = 0;         // T
  bool gated_mlp = false;              // SwiGLU (3 matrices) instead of GeLU (2 matrices)
  bool tied_embeddings = false;        // output layer shares the input embedding
  NormKind norm = NormKind::LayerNorm;
  bool linear_bias = true;             // GPT: biases on linear layers; Llama: none
  bool learned_position_embedding = true; // GPT: (T, C) table; Llama: RoPE, no parameters

  /// Number of parameters of the full (unsharded) model: embeddings, layers, final norm, output layer.
  [[nodiscard]] double num_parameters() const;
  /// Parameters of one transformer layer.
  [[nodiscard]] double layer_parameters() const;
  /// Width of the K (or V) projection: num_query_groups * head_dim.
  [[nodiscard]] std::int64_t kv_width() const { return num_query_groups * head_dim; }
  /// Width of the Q projection: num_attention_heads * head_dim.
  [[nodiscard]] std::int64_t q_width() const { return num_attention_heads * head_dim; }
};

/// Throws InputError (naming `where` and the field) if the spec is inconsistent: non-positive sizes,
/// heads not divisible by query groups, etc.
void validate(const ModelSpec& spec, const std::string& where);
/// Same, with field names prefixed (e.g. "model." when the spec comes from a scenario file's `model:` mapping).
void validate(const ModelSpec& spec, const std::string& where, const std::string& field_prefix);

} // namespace cuboid::model
