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

  // --- mixture of experts ---
  // A MoE layer replaces the dense MLP by a router (C -> E logits, no bias), E routed experts of which each token
  // visits top_k, and num_shared_experts experts every token visits (DeepSeek-V2/V3). Experts have the MLP layout of
  // the dense one (gated_mlp, linear_bias) with moe_ffn_hidden_size. Layers < first_k_dense_layers stay dense
  // (DeepSeek-V3 first_k_dense_replace = 3). num_experts == 0: a dense model (all other MoE fields are then 0).
  std::int64_t num_experts = 0;          // E routed experts (HF num_local_experts / n_routed_experts / num_experts)
  std::int64_t moe_top_k = 0;            // K experts per token (HF num_experts_per_tok; Megatron --moe-router-topk)
  std::int64_t moe_ffn_hidden_size = 0;  // F_e of one expert (HF moe_intermediate_size; Mixtral intermediate_size)
  std::int64_t num_shared_experts = 0;   // experts every token visits (HF n_shared_experts)
  std::int64_t first_k_dense_layers = 0; // leading layers with a dense MLP (HF first_k_dense_replace)

  [[nodiscard]] bool is_moe() const { return num_experts > 0; }
  [[nodiscard]] bool is_moe_layer(std::int64_t layer) const { return is_moe() && layer >= first_k_dense_layers; }
  [[nodiscard]] std::int64_t num_moe_layers() const { return is_moe() ? num_layers - first_k_dense_layers : 0; }
  /// Parameters of one MoE layer with all E routed experts (attention, norms, router, routed and shared experts).
  [[nodiscard]] double moe_layer_parameters() const;
  /// Parameters one token touches: num_parameters() with top_k instead of E routed experts per MoE layer
  /// (the "active parameters" of Mixtral's and DeepSeek's announcements). == num_parameters() for dense models.
  [[nodiscard]] double active_parameters() const;
  /// Parameters of one expert MLP (C -> F_e (x2 gated) -> C, biases if linear_bias).
  [[nodiscard]] double expert_parameters() const;
};

/// Throws InputError (naming `where` and the field) if the spec is inconsistent: non-positive sizes,
/// heads not divisible by query groups, etc.
void validate(const ModelSpec& spec, const std::string& where);
/// Same, with field names prefixed (e.g. "model." when the spec comes from a scenario file's `model:` mapping).
void validate(const ModelSpec& spec, const std::string& where, const std::string& field_prefix);

} // namespace cuboid::model
