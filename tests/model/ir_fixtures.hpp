// Hand-built models, clusters and plans for the IR tests ("[ir]"), independent of the catalogs and loaders.
// GPT shapes follow Brown et al. 2020 Table 2.1 (vocabulary padded to 51200 as in Narayanan et al. SC21).
#pragma once

#include "model/gpu_spec.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

#include <cstdint>

namespace cuboid::model::testing {

/// GPT-style model: LayerNorm, biases, learned positions, GeLU MLP with F = 4h, MHA, untied output layer.
inline ModelSpec gpt_model(std::int64_t layers, std::int64_t hidden, std::int64_t heads, std::int64_t seq = 2048,
                           std::int64_t vocab = 51200) {
  ModelSpec spec;
  spec.name = "gpt-test";
  spec.num_layers = layers;
  spec.hidden_size = hidden;
  spec.num_attention_heads = heads;
  spec.num_query_groups = heads;
  spec.head_dim = hidden / heads;
  spec.ffn_hidden_size = 4 * hidden;
  spec.vocab_size = vocab;
  spec.seq_length = seq;
  return spec;
}

/// GPT-3 175B: 96 layers, h = 12288, 96 heads, s = 2048.
inline ModelSpec gpt3_175b() { return gpt_model(96, 12288, 96); }

/// Llama-style model: RMSNorm, no biases, RoPE, SwiGLU, GQA, untied output layer.
inline ModelSpec llama_model(std::int64_t layers, std::int64_t hidden, std::int64_t heads, std::int64_t groups,
                             std::int64_t ffn, std::int64_t seq = 4096, std::int64_t vocab = 128256) {
  ModelSpec spec = gpt_model(layers, hidden, heads, seq, vocab);
  spec.name = "llama-test";
  spec.num_query_groups = groups;
  spec.ffn_hidden_size = ffn;
  spec.gated_mlp = true;
  spec.norm = NormKind::RmsNorm;
  spec.linear_bias = false;
  spec.learned_position_embedding = false;
  return spec;
}

inline ClusterSpec test_cluster(int num_gpus) {
  ClusterSpec cluster;
  cluster.name = "test-cluster";
  cluster.gpu.name = "a100-80gb";
  cluster.gpu.bf16_flops_per_s = 312e12;
  cluster.gpu.hbm_bytes = 80e9;
  cluster.gpu.hbm_bw_bytes_per_s = 2.0e12;
  cluster.num_gpus = num_gpus;
  cluster.gpus_per_node = 8;
  cluster.nvlink_bw_bytes_per_s = 300e9;
  cluster.nic_bw_bytes_per_s = 25e9;
  return cluster;
}

inline Plan make_plan(int tp, int pp, int dp, std::int64_t global_batch, std::int64_t micro_batch = 1, int vp = 1) {
  Plan plan;
  plan.tp = tp;
  plan.pp = pp;
  plan.dp = dp;
  plan.vp = vp;
  plan.micro_batch_size = micro_batch;
  plan.global_batch_size = global_batch;
  plan.schedule = vp > 1 ? Schedule::Interleaved : Schedule::OneFOneB;
  return plan;
}

} // namespace cuboid::model::testing
