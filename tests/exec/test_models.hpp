// Small model specs for the exec tests: 2-layer toys for gradient checks, the catalog's gpt-tiny and llama-tiny for
// training tests.
#pragma once

#include "model/model_catalog.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

namespace cuboid::exec::test {

/// GPT-style toy: L=2, C=8, 2 heads of 4, F=16, V=12, T=4.
inline model::ModelSpec toy_gpt() {
  model::ModelSpec m;
  m.name = "toy-gpt";
  m.num_layers = 2;
  m.hidden_size = 8;
  m.num_attention_heads = 2;
  m.num_query_groups = 2;
  m.head_dim = 4;
  m.ffn_hidden_size = 16;
  m.vocab_size = 12;
  m.seq_length = 4;
  m.tied_embeddings = true;
  return m;
}

/// Llama-style toy: RMSNorm, SwiGLU, no biases, GQA (4 heads, 2 KV groups), no learned positions, untied head.
inline model::ModelSpec toy_llama() {
  model::ModelSpec m = toy_gpt();
  m.name = "toy-llama";
  m.num_attention_heads = 4;
  m.num_query_groups = 2;
  m.head_dim = 2;
  m.gated_mlp = true;
  m.tied_embeddings = false;
  m.norm = model::NormKind::RmsNorm;
  m.linear_bias = false;
  m.learned_position_embedding = false;
  return m;
}

/// The catalog's gpt-tiny (4 layers, hidden 128, 8 heads, ffn 512, vocab 512, seq 128, tied embeddings).
inline model::ModelSpec gpt_tiny_shape() { return model::find_model("gpt-tiny"); }

/// The catalog's llama-tiny: gpt-tiny's size with RMSNorm, SwiGLU (F=352), RoPE, GQA (8 heads, 4 KV groups),
/// no biases, untied output layer.
inline model::ModelSpec llama_tiny_shape() { return model::find_model("llama-tiny"); }

// --- mixture of experts ---
/// gpt-tiny with a MoE MLP in layers 1..3 (layer 0 stays dense, to run both kinds side by side): 4 routed experts of
/// width 128, top-2, no shared experts.
inline model::ModelSpec moe_tiny_shape() {
  model::ModelSpec m = gpt_tiny_shape();
  m.name = "moe-tiny";
  m.num_experts = 4;
  m.moe_top_k = 2;
  m.moe_ffn_hidden_size = 128;
  m.first_k_dense_layers = 1;
  return m;
}

/// llama-tiny with the same MoE layers (SwiGLU experts without biases).
inline model::ModelSpec moe_llama_tiny_shape() {
  model::ModelSpec m = llama_tiny_shape();
  m.name = "moe-llama-tiny";
  m.num_experts = 4;
  m.moe_top_k = 2;
  m.moe_ffn_hidden_size = 96;
  m.first_k_dense_layers = 1;
  return m;
}

/// The toys with 4 experts of width 6, top-2, in layer 1 (layer 0 dense).
inline model::ModelSpec toy_moe(const model::ModelSpec& dense) {
  model::ModelSpec m = dense;
  m.name = dense.name + "-moe";
  m.num_experts = 4;
  m.moe_top_k = 2;
  m.moe_ffn_hidden_size = 6;
  m.first_k_dense_layers = 1;
  return m;
}

inline model::Plan single_rank_plan(std::int64_t micro_batch, std::int64_t global_batch) {
  model::Plan plan;
  plan.micro_batch_size = micro_batch;
  plan.global_batch_size = global_batch;
  return plan;
}

} // namespace cuboid::exec::test
