// Built-in model catalog (GPT-3 family, Megatron 530B/1T, Llama 3.x, gpt-tiny) and the model loaders:
// catalog name, Hugging Face config.json, or a YAML file with ModelSpec field names. Every entry cites its source.
#pragma once

#include "model/model_spec.hpp"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace YAML {
class Node;
} // namespace YAML

namespace cuboid::model {

/// max_position_embeddings in a HF config is the inference context, not a training length: configs get this
/// sequence length unless the user overrides it (--seq-length or seq_length in a YAML model).
constexpr std::int64_t HF_DEFAULT_SEQ_LENGTH = 4096;

/// All catalog entries, in a stable order (small to large within each family).
std::vector<ModelSpec> builtin_models();
/// Their names ("gpt-tiny", "gpt3-175b", "llama-3.1-8b", ...).
std::vector<std::string> builtin_model_names();

/// Catalog lookup by exact name; InputError "<where>: <field>: unknown model 'x' (valid: ...; did you mean ...)".
ModelSpec find_model(const std::string& name, const std::string& where, const std::string& field);
/// Same, reported as a command-line --model error.
ModelSpec find_model(const std::string& name);

/// Maps a Hugging Face config.json (llama/mistral/qwen2/qwen3 style or gpt2 style) to a ModelSpec named after the
/// file (`where`, e.g. ".../llama-3.1-8b.config.json" -> "llama-3.1-8b"). seq_length = HF_DEFAULT_SEQ_LENGTH.
/// InputError naming `where` and the key for missing keys, wrong types, non-positive values, MoE configs.
ModelSpec model_from_hf_config(const nlohmann::json& config, const std::string& where);
/// Reads and maps a config.json file (malformed JSON -> InputError with the file and position).
ModelSpec load_hf_config_file(const std::string& path);

/// A YAML mapping of ModelSpec fields (name, source, num_layers, hidden_size, num_attention_heads, num_query_groups,
/// head_dim, ffn_hidden_size, vocab_size, seq_length, gated_mlp, tied_embeddings, norm: layernorm|rmsnorm,
/// linear_bias, learned_position_embedding, family: gpt|llama for the layout flags), optionally `base: <catalog name or config.json path>` plus overrides.
/// `path` is the mapping's key path in messages ("model" inside a scenario, "" for a model file); relative base
/// paths resolve against `base_dir`. Unknown keys are errors with did-you-mean. The result is validated.
ModelSpec model_from_yaml(const YAML::Node& node, const std::string& where, const std::string& path,
                          const std::string& base_dir);

/// A catalog name, a path to a HF config (*.json) or a path to a model YAML (*.yaml, *.yml). Errors name `where`
/// and `field` (by default "command line" and "--model").
ModelSpec load_model(const std::string& name_or_path, const std::string& where = "command line",
                     const std::string& field = "--model");

} // namespace cuboid::model
