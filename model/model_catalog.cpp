// The built-in model catalog. Shapes come from the cited papers and configs; where a paper is inconsistent
// (GPT-3 XL's heads, GPT-3 13B's width) the entry says which number was kept and why.
#include "model/model_catalog.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

namespace cuboid::model {

namespace {
// Megatron-LM pads GPT-2's 50,257-token BPE vocabulary to 51,200 (Narayanan et al. SC21, section 5.1, V = 51,200).
constexpr std::int64_t GPT_PADDED_VOCAB = 51200;
// GPT-3 context window n_ctx = 2048 (Brown et al. 2020, section 2.1).
constexpr std::int64_t GPT3_SEQ_LENGTH = 2048;
// Llama 3 pre-training: sequences of 8,192 tokens after the first 252M tokens (Dubey et al. 2024, "The Llama 3
// Herd of Models", section 3.4.1); the 128K context of the configs comes from a later long-context stage.
constexpr std::int64_t LLAMA3_SEQ_LENGTH = 8192;
constexpr std::int64_t LLAMA3_VOCAB = 128256;
constexpr std::int64_t LLAMA3_HEAD_DIM = 128;
constexpr std::int64_t LLAMA3_KV_HEADS = 8;
constexpr std::int64_t GPT_FFN_MULTIPLIER = 4; // F = 4C (Brown et al. 2020 section 2.1; Megatron default)

constexpr const char* GPT_TIED_NOTE =
    "; GPT layout: LayerNorm, biased linears, learned positions, GeLU, embeddings tied to the output layer "
    "(Megatron default; SC21 eq. 2 counts V*h once)";
constexpr const char* LLAMA3_SEQ_NOTE =
    "; seq_length 8192 = Llama 3 pre-training length (Dubey et al. 2024 sec. 3.4.1), not max_position_embeddings";

// GPT family (Megatron-LM GPTModel).
ModelSpec gpt(const std::string& name, std::int64_t layers, std::int64_t hidden, std::int64_t heads,
              const std::string& source) {
  ModelSpec spec;
  spec.name = name;
  spec.source = source + GPT_TIED_NOTE;
  spec.num_layers = layers;
  spec.hidden_size = hidden;
  spec.num_attention_heads = heads;
  spec.num_query_groups = heads;
  spec.head_dim = hidden / heads;
  spec.ffn_hidden_size = GPT_FFN_MULTIPLIER * hidden;
  spec.vocab_size = GPT_PADDED_VOCAB;
  spec.seq_length = GPT3_SEQ_LENGTH;
  spec.tied_embeddings = true;
  return spec;
}

// Llama family (RMSNorm, no biases, RoPE, SwiGLU, GQA), numbers as in the Hugging Face config.json.
ModelSpec llama(const std::string& name, std::int64_t layers, std::int64_t hidden, std::int64_t heads,
                std::int64_t ffn, bool tied, const std::string& source) {
  ModelSpec spec;
  spec.name = name;
  spec.source = source + LLAMA3_SEQ_NOTE;
  spec.num_layers = layers;
  spec.hidden_size = hidden;
  spec.num_attention_heads = heads;
  spec.num_query_groups = LLAMA3_KV_HEADS;
  spec.head_dim = LLAMA3_HEAD_DIM;
  spec.ffn_hidden_size = ffn;
  spec.vocab_size = LLAMA3_VOCAB;
  spec.seq_length = LLAMA3_SEQ_LENGTH;
  spec.gated_mlp = true;
  spec.tied_embeddings = tied;
  spec.norm = NormKind::RmsNorm;
  spec.linear_bias = false;
  spec.learned_position_embedding = false;
  return spec;
}

ModelSpec gpt_tiny() {
  ModelSpec spec = gpt("gpt-tiny", 4, 128, 8, "cuboid toy model for CPU runs and tests (4 layers, C=128, 8 heads)");
  spec.ffn_hidden_size = 512;
  spec.vocab_size = 512;
  spec.seq_length = 128;
  return spec;
}

ModelSpec llama_tiny() {
  ModelSpec spec = llama("llama-tiny", 4, 128, 8, 352, false, "");
  spec.source = "cuboid toy Llama-style model of gpt-tiny's size (8 heads of 16, 4 KV groups, SwiGLU F=352, untied)";
  spec.num_query_groups = 4;
  spec.head_dim = 16;
  spec.vocab_size = 512;
  spec.seq_length = 128;
  return spec;
}
// --- mixture of experts ---
// Mixtral-8x7B: mistralai/Mixtral-8x7B-Instruct-v0.1 config.json (scenarios/models/mixtral-8x7b-instruct-v0.1.config.json):
// Mistral-7B-shaped layers whose MLP is 8 SwiGLU experts of intermediate_size 14336, 2 per token.
ModelSpec mixtral_8x7b() {
  ModelSpec spec;
  spec.name = "mixtral-8x7b";
  spec.source = "mistralai/Mixtral-8x7B-Instruct-v0.1 config.json (scenarios/models/"
                "mixtral-8x7b-instruct-v0.1.config.json): 32 layers, h 4096, 32 heads / 8 KV heads of 128, 8 experts "
                "of F 14336 (SwiGLU), top-2, V 32000, untied; seq_length 4096 = cuboid's HF default (Mixtral's 32k "
                "context, Jiang et al. 2024 arXiv:2401.04088 sec. 2: --seq-length 32768); 46.7B total / 12.9B active "
                "parameters (Mistral AI, 'Mixtral of experts', 2023-12-11)";
  spec.num_layers = 32;
  spec.hidden_size = 4096;
  spec.num_attention_heads = 32;
  spec.num_query_groups = 8;
  spec.head_dim = 128;
  spec.ffn_hidden_size = 14336;
  spec.vocab_size = 32000;
  spec.seq_length = HF_DEFAULT_SEQ_LENGTH;
  spec.gated_mlp = true;
  spec.norm = NormKind::RmsNorm;
  spec.linear_bias = false;
  spec.learned_position_embedding = false;
  spec.num_experts = 8;
  spec.moe_top_k = 2;
  spec.moe_ffn_hidden_size = 14336;
  return spec;
}

// DeepSeek-V3 (DeepSeek-AI, "DeepSeek-V3 Technical Report", arXiv:2412.19437, sec. 4.2): 61 layers, h 7168, 128
// heads, first 3 layers dense (FFN 18432, config.json intermediate_size), the others MoE with 1 shared + 256
// routed experts of F 2048, 8 routed per token; V 129280; pre-training sequence length 4K; 671B total, 37B active
// (the 14B multi-token-prediction module is not part of those counts and not modelled).
// APPROXIMATION: multi-head latent attention (q_lora_rank 1536, kv_lora_rank 512, qk 128+64, v 128 per head) is
// modelled as GQA with 128 query heads of head_dim 96 and 8 KV groups: attention parameters per layer
// h*(q + 2kv) + q*h = 7168 * 96 * (128 + 16) + 12288 * 7168 = 187.17M vs MLA's 187.11M (q_a 11.01M + q_b 37.75M +
// kv_a 4.13M + kv_b 16.78M + o 117.44M; the 2k norm weights of q_a/kv_a are dropped). The attention core FLOPs are
// 4*s*12288 per token vs MLA's 2*s*128*(192 + 128) = 0.6x MLA's; the projection GEMMs have the parameter count's
// FLOPs but not MLA's shapes (no low-rank factorisation), and KV activations are GQA-sized, not the latent 576.
ModelSpec deepseek_v3() {
  ModelSpec spec;
  spec.name = "deepseek-v3";
  spec.source = "DeepSeek-AI, DeepSeek-V3 Technical Report (arXiv:2412.19437) sec. 4.2 and its config.json: 61 layers, "
                "h 7168, 128 heads, first 3 layers dense (F 18432), then 1 shared + 256 routed experts of F 2048, "
                "top-8, V 129280, seq 4096; MLA approximated by GQA 128 heads x 96 / 8 KV groups (same attention "
                "parameters, 0.6x the attention-core FLOPs; model_catalog.cpp); MTP module not modelled";
  spec.num_layers = 61;
  spec.hidden_size = 7168;
  spec.num_attention_heads = 128;
  spec.num_query_groups = 8;
  spec.head_dim = 96;
  spec.ffn_hidden_size = 18432;
  spec.vocab_size = 129280;
  spec.seq_length = 4096;
  spec.gated_mlp = true;
  spec.norm = NormKind::RmsNorm;
  spec.linear_bias = false;
  spec.learned_position_embedding = false;
  spec.num_experts = 256;
  spec.moe_top_k = 8;
  spec.moe_ffn_hidden_size = 2048;
  spec.num_shared_experts = 1;
  spec.first_k_dense_layers = 3;
  return spec;
}
} // namespace

std::vector<ModelSpec> builtin_models() {
  constexpr const char* BROWN = "Brown et al. 2020 (arXiv:2005.14165) Table 2.1";
  constexpr const char* SC21 = "Narayanan et al. SC21 (arXiv:2104.04473) Table 1";
  std::vector<ModelSpec> models;
  models.push_back(gpt_tiny());
  models.push_back(llama_tiny());
  // Table 2.1 lists GPT-3 XL as 24 heads of d_head 128, which does not fit d_model 2048: we keep d_head = 128.
  models.push_back(gpt("gpt3-1.3b", 24, 2048, 16,
                       fmt::format("{} GPT-3 XL: 24 layers, d_model 2048, d_head 128 (16 heads; the table's 24 heads "
                                   "do not fit 2048), n_ctx 2048; V padded to 51200 (SC21)",
                                   BROWN)));
  models.push_back(gpt("gpt3-2.7b", 32, 2560, 32,
                       fmt::format("{} GPT-3 2.7B: 32 layers, d_model 2560, 32 heads of 80, n_ctx 2048; V padded to "
                                   "51200 (SC21)",
                                   BROWN)));
  models.push_back(gpt("gpt3-6.7b", 32, 4096, 32,
                       fmt::format("{} GPT-3 6.7B: 32 layers, d_model 4096, 32 heads of 128, n_ctx 2048; V padded to "
                                   "51200 (SC21)",
                                   BROWN)));
  // Table 2.1 prints d_model 5140 for 13B; 40 heads x d_head 128 = 5120, the width every reproduction uses.
  models.push_back(gpt("gpt3-13b", 40, 5120, 40,
                       fmt::format("{} GPT-3 13B: 40 layers, 40 heads of 128 (d_model 5120; the table's 5140 is "
                                   "40x128 mistyped), n_ctx 2048; V padded to 51200 (SC21)",
                                   BROWN)));
  models.push_back(gpt("gpt3-175b", 96, 12288, 96,
                       fmt::format("{} GPT-3 175B and {} sec. 5.1: 96 layers, h 12288, 96 heads, s 2048, V 51200",
                                   BROWN, "Narayanan et al. SC21")));
  models.push_back(gpt("megatron-530b", 105, 20480, 128,
                       fmt::format("{} 529.6B row: 105 layers, h 20480, 128 heads, s 2048, V 51200", SC21)));
  models.push_back(gpt("megatron-1t", 128, 25600, 160,
                       fmt::format("{} 1008.0B row: 128 layers, h 25600, 160 heads, s 2048, V 51200", SC21)));
  models.push_back(llama("llama-3.2-3b", 28, 3072, 24, 8192, true,
                         "meta-llama/Llama-3.2-3B config.json (scenarios/models/llama-3.2-3b.config.json, "
                         "tie_word_embeddings true); 3.2's own pre-training length is not published, Llama 3's used"));
  models.push_back(llama("llama-3.1-8b", 32, 4096, 32, 14336, false,
                         "meta-llama/Llama-3.1-8B config.json (scenarios/models/llama-3.1-8b.config.json)"));
  models.push_back(llama("llama-3-70b", 80, 8192, 64, 28672, false,
                         "meta-llama/Meta-Llama-3-70B config.json (scenarios/models/llama-3-70b.config.json)"));
  models.push_back(llama("llama-3.1-405b", 126, 16384, 128, 53248, false,
                         "meta-llama/Llama-3.1-405B config.json, num_key_value_heads 8 as corrected upstream "
                         "(scenarios/models/llama-3.1-405b.config.json)"));
  // --- mixture of experts ---
  models.push_back(mixtral_8x7b());
  models.push_back(deepseek_v3());
  return models;
}

std::vector<std::string> builtin_model_names() {
  std::vector<std::string> names;
  for (const auto& spec : builtin_models()) {
    names.push_back(spec.name);
  }
  return names;
}

ModelSpec find_model(const std::string& name, const std::string& where, const std::string& field) {
  for (auto& spec : builtin_models()) {
    if (spec.name == name) {
      return spec;
    }
  }
  throw InputError(input_message(
      where, field, fmt::format("unknown model '{}'{}", name, valid_values_hint(name, builtin_model_names()))));
}

ModelSpec find_model(const std::string& name) { return find_model(name, "command line", "--model"); }

} // namespace cuboid::model
