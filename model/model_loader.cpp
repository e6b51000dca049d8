// Model loaders: Hugging Face config.json (Llama-style and GPT-2-style keys) and YAML mappings of ModelSpec fields,
// with strict checking (missing keys, wrong types, non-positive values -> InputError naming the file and key).
#include "model/errors.hpp"
#include "model/model_catalog.hpp"
#include "model/yaml_fields.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>

namespace cuboid::model {

namespace {
using nlohmann::json;

// Hugging Face model_type values whose configs describe a Llama-like decoder: RMSNorm, RoPE, SwiGLU (hidden_act
// silu), no linear biases (transformers LlamaConfig / MistralConfig / Qwen2Config / Qwen3Config).
// --- mixture of experts --- mixtral (MixtralConfig) and qwen3_moe (Qwen3MoeConfig) are Llama-like decoders whose
// MLPs are MoE layers.
const std::vector<std::string> LLAMA_LIKE_TYPES = {"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe"};
const std::vector<std::string> SUPPORTED_TYPES = {"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe",
                                                  "gpt2"};
// Keys naming the routed-expert count: Mixtral num_local_experts, Qwen-MoE num_experts, DeepSeek n_routed_experts.
const std::vector<std::string> MOE_KEYS = {"num_local_experts", "num_experts", "n_routed_experts"};
// DeepSeek-V2/V3 multi-head latent attention: its low-rank Q/KV projections are not a GQA shape.
const std::vector<std::string> MLA_KEYS = {"kv_lora_rank", "q_lora_rank"};

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool has(const json& config, const std::string& key) { return config.contains(key) && !config.at(key).is_null(); }

std::optional<std::int64_t> hf_int(const json& config, const std::string& key, const std::string& where,
                                   bool required) {
  if (!has(config, key)) {
    if (required) {
      throw InputError(input_message(where, key, "missing required key (expected a positive integer)"));
    }
    return std::nullopt;
  }
  const json& value = config.at(key);
  if (!value.is_number_integer() || value.get<std::int64_t>() <= 0) {
    throw InputError(input_message(where, key, fmt::format("{} is not valid (expected a positive integer)",
                                                           value.dump())));
  }
  return value.get<std::int64_t>();
}

// A non-negative integer key (counts where 0 is meaningful: n_shared_experts, first_k_dense_replace).
std::optional<std::int64_t> hf_count(const json& config, const std::string& key, const std::string& where) {
  if (!has(config, key)) {
    return std::nullopt;
  }
  const json& value = config.at(key);
  if (!value.is_number_integer() || value.get<std::int64_t>() < 0) {
    throw InputError(input_message(where, key, fmt::format("{} is not valid (expected a non-negative integer)",
                                                           value.dump())));
  }
  return value.get<std::int64_t>();
}

std::optional<bool> hf_bool(const json& config, const std::string& key, const std::string& where) {
  if (!has(config, key)) {
    return std::nullopt;
  }
  if (!config.at(key).is_boolean()) {
    throw InputError(
        input_message(where, key, fmt::format("{} is not valid (expected true or false)", config.at(key).dump())));
  }
  return config.at(key).get<bool>();
}

std::optional<std::string> hf_string(const json& config, const std::string& key, const std::string& where) {
  if (!has(config, key)) {
    return std::nullopt;
  }
  if (!config.at(key).is_string()) {
    throw InputError(input_message(where, key, fmt::format("{} is not valid (expected a string)",
                                                           config.at(key).dump())));
  }
  return config.at(key).get<std::string>();
}

std::string name_from_path(const std::string& path) {
  std::string stem = std::filesystem::path(path).stem().string(); // "llama-3.1-8b.config"
  return ends_with(stem, ".config") ? stem.substr(0, stem.size() - std::string(".config").size()) : stem;
}

// GPT-2 keys (transformers GPT2Config): learned positions can only cover n_positions tokens, so that is the
// training length here; tie_word_embeddings defaults to true as in PretrainedConfig.
ModelSpec gpt2_from_hf(const json& config, const std::string& where) {
  ModelSpec spec;
  spec.num_layers = *hf_int(config, "n_layer", where, true);
  spec.hidden_size = *hf_int(config, "n_embd", where, true);
  spec.num_attention_heads = *hf_int(config, "n_head", where, true);
  spec.num_query_groups = spec.num_attention_heads;
  spec.vocab_size = *hf_int(config, "vocab_size", where, true);
  spec.seq_length = *hf_int(config, "n_positions", where, true);
  spec.ffn_hidden_size = hf_int(config, "n_inner", where, false).value_or(4 * spec.hidden_size);
  spec.tied_embeddings = hf_bool(config, "tie_word_embeddings", where).value_or(true);
  if (spec.hidden_size % spec.num_attention_heads != 0) {
    throw InputError(input_message(where, "n_embd", fmt::format("{} is not divisible by n_head={}", spec.hidden_size,
                                                                spec.num_attention_heads)));
  }
  spec.head_dim = spec.hidden_size / spec.num_attention_heads;
  spec.source = fmt::format("Hugging Face config {} (GPT-2 style; seq_length = n_positions {}, the learned position "
                            "table's size)",
                            where, spec.seq_length);
  return spec;
}

// --- mixture of experts ---
// MoE keys of Mixtral (num_local_experts, num_experts_per_tok; each expert is intermediate_size wide), Qwen3-MoE
// (num_experts, moe_intermediate_size, decoder_sparse_step, mlp_only_layers) and DeepSeek (n_routed_experts,
// n_shared_experts, first_k_dense_replace). Layer patterns other than "every layer from first_k_dense_replace on"
// are refused rather than mis-counted.
void moe_from_hf(const json& config, const std::string& where, ModelSpec& spec) {
  std::optional<std::string> experts_key;
  for (const auto& key : MOE_KEYS) {
    if (has(config, key)) {
      if (experts_key) {
        throw InputError(input_message(where, key, fmt::format("given together with {} (expected one expert-count key)",
                                                               *experts_key)));
      }
      experts_key = key;
    }
  }
  if (!experts_key) {
    return;
  }
  spec.num_experts = *hf_int(config, *experts_key, where, true);
  spec.moe_top_k = *hf_int(config, "num_experts_per_tok", where, true);
  if (spec.moe_top_k > spec.num_experts) {
    throw InputError(input_message(where, "num_experts_per_tok",
                                   fmt::format("{} is not valid (expected at most {} = {})", spec.moe_top_k,
                                               *experts_key, spec.num_experts)));
  }
  spec.moe_ffn_hidden_size = hf_int(config, "moe_intermediate_size", where, false).value_or(spec.ffn_hidden_size);
  spec.num_shared_experts = hf_count(config, "n_shared_experts", where).value_or(0);
  spec.first_k_dense_layers = hf_count(config, "first_k_dense_replace", where).value_or(0);
  if (const auto step = hf_int(config, "decoder_sparse_step", where, false); step && *step != 1) {
    throw InputError(input_message(where, "decoder_sparse_step",
                                   fmt::format("{} is not supported (valid: 1, every layer a MoE layer)", *step)));
  }
  if (has(config, "mlp_only_layers") &&
      !(config.at("mlp_only_layers").is_array() && config.at("mlp_only_layers").empty())) {
    throw InputError(input_message(where, "mlp_only_layers",
                                   fmt::format("{} is not supported (valid: [], use first_k_dense_replace for leading "
                                               "dense layers)",
                                               config.at("mlp_only_layers").dump())));
  }
  if (spec.first_k_dense_layers >= spec.num_layers) {
    throw InputError(input_message(where, "first_k_dense_replace",
                                   fmt::format("{} is not valid (expected less than num_hidden_layers = {})",
                                               spec.first_k_dense_layers, spec.num_layers)));
  }
}

ModelSpec llama_from_hf(const json& config, const std::string& where, const std::string& model_type) {
  const std::string act = hf_string(config, "hidden_act", where).value_or("silu");
  if (act != "silu") {
    throw InputError(input_message(where, "hidden_act",
                                   fmt::format("'{}' is not supported for model_type {} (valid: silu, i.e. SwiGLU)",
                                               act, model_type)));
  }
  ModelSpec spec;
  spec.num_layers = *hf_int(config, "num_hidden_layers", where, true);
  spec.hidden_size = *hf_int(config, "hidden_size", where, true);
  spec.num_attention_heads = *hf_int(config, "num_attention_heads", where, true);
  spec.num_query_groups = hf_int(config, "num_key_value_heads", where, false).value_or(spec.num_attention_heads);
  spec.ffn_hidden_size = *hf_int(config, "intermediate_size", where, true);
  spec.vocab_size = *hf_int(config, "vocab_size", where, true);
  const auto head_dim = hf_int(config, "head_dim", where, false);
  if (!head_dim && spec.hidden_size % spec.num_attention_heads != 0) {
    throw InputError(input_message(where, "hidden_size",
                                   fmt::format("{} is not divisible by num_attention_heads={} and head_dim is not "
                                               "given (set head_dim)",
                                               spec.hidden_size, spec.num_attention_heads)));
  }
  spec.head_dim = head_dim.value_or(spec.hidden_size / spec.num_attention_heads);
  spec.tied_embeddings = hf_bool(config, "tie_word_embeddings", where).value_or(false); // LlamaConfig default
  spec.seq_length = HF_DEFAULT_SEQ_LENGTH;
  spec.gated_mlp = true;
  spec.norm = NormKind::RmsNorm;
  spec.linear_bias = false;
  spec.learned_position_embedding = false;
  const bool any_bias = hf_bool(config, "attention_bias", where).value_or(false) ||
                        hf_bool(config, "mlp_bias", where).value_or(false);
  spec.source = fmt::format("Hugging Face config {} (model_type {}; seq_length {} is cuboid's default for HF configs, "
                            "not max_position_embeddings: override with --seq-length){}",
                            where, model_type, HF_DEFAULT_SEQ_LENGTH,
                            any_bias ? "; attention_bias/mlp_bias not counted" : "");
  moe_from_hf(config, where, spec);
  return spec;
}
} // namespace

ModelSpec model_from_hf_config(const json& config, const std::string& where) {
  if (!config.is_object()) {
    throw InputError(input_message(where, "", "expected a JSON object (a Hugging Face config.json)"));
  }
  for (const auto& key : MLA_KEYS) {
    if (has(config, key)) {
      throw InputError(input_message(where, key,
                                     fmt::format("{}: multi-head latent attention (DeepSeek MLA) is not supported "
                                                 "from a config.json (use the catalog entry deepseek-v3, which "
                                                 "approximates MLA; valid model types: {})",
                                                 config.at(key).dump(), fmt::join(SUPPORTED_TYPES, ", "))));
    }
  }
  std::optional<std::string> model_type = hf_string(config, "model_type", where);
  if (!model_type) {
    if (has(config, "n_layer")) {
      model_type = "gpt2";
    } else if (hf_string(config, "hidden_act", where).value_or("") == "silu") {
      model_type = "llama";
    } else {
      throw InputError(input_message(
          where, "model_type",
          fmt::format("missing, and the keys match no known layout (valid: {})", fmt::join(SUPPORTED_TYPES, ", "))));
    }
  }
  ModelSpec spec;
  if (*model_type == "gpt2") {
    for (const auto& key : MOE_KEYS) {
      if (has(config, key)) {
        throw InputError(input_message(where, key, "mixture-of-experts keys are not supported for model_type gpt2 "
                                                   "(valid for: mixtral, qwen3_moe and the other Llama-like types)"));
      }
    }
    spec = gpt2_from_hf(config, where);
  } else if (std::find(LLAMA_LIKE_TYPES.begin(), LLAMA_LIKE_TYPES.end(), *model_type) != LLAMA_LIKE_TYPES.end()) {
    spec = llama_from_hf(config, where, *model_type);
  } else {
    throw InputError(input_message(where, "model_type",
                                   fmt::format("'{}' is not supported{}", *model_type,
                                               valid_values_hint(*model_type, SUPPORTED_TYPES))));
  }
  spec.name = name_from_path(where);
  validate(spec, where);
  return spec;
}

ModelSpec load_hf_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    throw InputError(input_message(path, "", "cannot read file"));
  }
  // nlohmann keeps the last of two equal keys silently; a config with a key twice is ambiguous, so it is rejected.
  std::vector<std::vector<std::string>> keys_by_depth;
  const json::parser_callback_t reject_duplicates = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys_by_depth.emplace_back();
    } else if (event == json::parse_event_t::object_end && !keys_by_depth.empty()) {
      keys_by_depth.pop_back();
    } else if (event == json::parse_event_t::key && !keys_by_depth.empty()) {
      auto& keys = keys_by_depth.back();
      const auto key = parsed.get<std::string>();
      if (std::find(keys.begin(), keys.end(), key) != keys.end()) {
        throw InputError(input_message(path, key, "duplicate key (each key may appear once)"));
      }
      keys.push_back(key);
    }
    return true;
  };
  json config;
  try {
    config = json::parse(in, reject_duplicates);
  } catch (const json::exception& error) { // parse_error, and out_of_range for numbers such as 1e400
    throw InputError(input_message(path, "", fmt::format("invalid JSON: {}", error.what())));
  }
  return model_from_hf_config(config, path);
}

namespace {
const std::vector<std::string> MODEL_YAML_KEYS = {
    "base",       "family",          "name",          "source",         "num_layers",         "hidden_size",
    "num_attention_heads", "num_query_groups", "head_dim", "ffn_hidden_size", "vocab_size",   "seq_length",
    "gated_mlp",  "tied_embeddings", "norm",          "linear_bias",    "learned_position_embedding",
    // --- mixture of experts ---
    "num_experts", "moe_top_k", "moe_ffn_hidden_size", "num_shared_experts", "first_k_dense_layers"};
const std::vector<std::string> FAMILIES = {"gpt", "llama"};
const std::vector<std::string> NORMS = {"layernorm", "rmsnorm"};

// `family: gpt|llama` sets the layout flags in one go (each flag can still be overridden).
void apply_family(ModelSpec& spec, const std::string& family) {
  const bool is_llama = family == "llama";
  spec.gated_mlp = is_llama;
  spec.norm = is_llama ? NormKind::RmsNorm : NormKind::LayerNorm;
  spec.linear_bias = !is_llama;
  spec.learned_position_embedding = !is_llama;
  spec.tied_embeddings = false;
}

ModelSpec base_model(const std::string& base, const std::string& where, const std::string& field,
                     const std::string& base_dir) {
  if (ends_with(base, ".json")) {
    const std::filesystem::path path(base);
    return load_hf_config_file(path.is_absolute() || base_dir.empty() ? base : (base_dir / path).string());
  }
  return find_model(base, where, field);
}
} // namespace

ModelSpec model_from_yaml(const YAML::Node& node, const std::string& where, const std::string& path,
                          const std::string& base_dir) {
  yaml::check_mapping(node, where, path, MODEL_YAML_KEYS);
  const auto key = [&](const char* name) { return yaml::join_path(path, name); };
  ModelSpec spec;
  const bool has_base = static_cast<bool>(node["base"]);
  if (has_base) {
    spec = base_model(yaml::read_string(node["base"], where, key("base")), where, key("base"), base_dir);
  }
  const ModelSpec base = spec;
  if (node["family"]) {
    const std::string family = yaml::read_string(node["family"], where, key("family"));
    if (std::find(FAMILIES.begin(), FAMILIES.end(), family) == FAMILIES.end()) {
      throw InputError(input_message(where, key("family"),
                                     fmt::format("'{}' is not valid{}", family, valid_values_hint(family, FAMILIES))));
    }
    apply_family(spec, family);
  }
  const auto read_size = [&](const char* name, std::int64_t& field, bool required) {
    if (node[name]) {
      field = yaml::read_positive_int(node[name], where, key(name));
    } else if (required) {
      throw InputError(input_message(where, key(name), "missing required key (expected a positive integer)"));
    }
  };
  const auto read_flag = [&](const char* name, bool& field) {
    if (node[name]) {
      field = yaml::read_bool(node[name], where, key(name));
    }
  };
  read_size("num_layers", spec.num_layers, !has_base);
  read_size("hidden_size", spec.hidden_size, !has_base);
  read_size("num_attention_heads", spec.num_attention_heads, !has_base);
  read_size("vocab_size", spec.vocab_size, !has_base);
  read_size("seq_length", spec.seq_length, !has_base);
  read_flag("gated_mlp", spec.gated_mlp);
  read_flag("tied_embeddings", spec.tied_embeddings);
  read_flag("linear_bias", spec.linear_bias);
  read_flag("learned_position_embedding", spec.learned_position_embedding);
  if (node["norm"]) {
    const std::string norm = yaml::read_string(node["norm"], where, key("norm"));
    if (std::find(NORMS.begin(), NORMS.end(), norm) == NORMS.end()) {
      throw InputError(input_message(where, key("norm"),
                                     fmt::format("'{}' is not valid{}", norm, valid_values_hint(norm, NORMS))));
    }
    spec.norm = norm == "rmsnorm" ? NormKind::RmsNorm : NormKind::LayerNorm;
  }
  // Derived defaults follow Megatron-LM: head_dim = C / heads (kv_channels), MHA unless groups are given,
  // F = 4C for a GeLU MLP; a SwiGLU F has no single convention, so it must be given.
  const bool shape_changed =
      spec.hidden_size != base.hidden_size || spec.num_attention_heads != base.num_attention_heads;
  if (node["head_dim"]) {
    spec.head_dim = yaml::read_positive_int(node["head_dim"], where, key("head_dim"));
  } else if (!has_base || shape_changed) {
    if (spec.hidden_size % spec.num_attention_heads != 0) {
      throw InputError(input_message(where, key("hidden_size"),
                                     fmt::format("{} is not divisible by num_attention_heads={} (or set head_dim)",
                                                 spec.hidden_size, spec.num_attention_heads)));
    }
    spec.head_dim = spec.hidden_size / spec.num_attention_heads;
  }
  if (node["num_query_groups"]) {
    spec.num_query_groups = yaml::read_positive_int(node["num_query_groups"], where, key("num_query_groups"));
  } else if (!has_base || base.num_query_groups == base.num_attention_heads) {
    spec.num_query_groups = spec.num_attention_heads; // MHA stays MHA
  }
  if (node["ffn_hidden_size"]) {
    spec.ffn_hidden_size = yaml::read_positive_int(node["ffn_hidden_size"], where, key("ffn_hidden_size"));
  } else if (!has_base || spec.hidden_size != base.hidden_size) {
    if (spec.gated_mlp) {
      throw InputError(input_message(where, key("ffn_hidden_size"),
                                     "missing required key for a gated (SwiGLU) MLP (expected a positive integer)"));
    }
    spec.ffn_hidden_size = 4 * spec.hidden_size;
  }
  // --- mixture of experts --- (validate() checks the combination: top_k <= E, sizes set for a MoE model)
  for (const auto& [name, field] : {std::pair<const char*, std::int64_t*>{"num_experts", &spec.num_experts},
                                    {"moe_top_k", &spec.moe_top_k},
                                    {"moe_ffn_hidden_size", &spec.moe_ffn_hidden_size},
                                    {"num_shared_experts", &spec.num_shared_experts},
                                    {"first_k_dense_layers", &spec.first_k_dense_layers}}) {
    if (node[name]) {
      *field = yaml::read_non_negative_int32(node[name], where, key(name));
    }
  }
  if (node["name"]) {
    spec.name = yaml::read_string(node["name"], where, key("name"));
  } else if (!has_base) {
    spec.name = name_from_path(where);
  }
  if (node["source"]) {
    spec.source = yaml::read_string(node["source"], where, key("source"));
  } else {
    spec.source = has_base ? fmt::format("{}; overridden by {}", base.source, where) : fmt::format("{}", where);
  }
  validate(spec, where, path.empty() ? std::string{} : path + ".");
  return spec;
}

ModelSpec load_model(const std::string& name_or_path, const std::string& where, const std::string& field) {
  if (ends_with(name_or_path, ".json")) {
    return load_hf_config_file(name_or_path);
  }
  if (ends_with(name_or_path, ".yaml") || ends_with(name_or_path, ".yml")) {
    const YAML::Node node = yaml::load_file(name_or_path);
    return model_from_yaml(node, name_or_path, "",
                           std::filesystem::path(name_or_path).parent_path().string());
  }
  return find_model(name_or_path, where, field);
}

} // namespace cuboid::model
