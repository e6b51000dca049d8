// Strict typed reading of YAML scenario/model/cluster files: every problem becomes an InputError naming the file,
// the key path ("plan.tp"), the bad value and what is valid. Unknown and duplicate keys are errors (yaml-cpp silently
// keeps the first of two duplicate keys on lookup, so duplicates are found by iterating the mapping).
// Internal to cuboid_model (yaml-cpp is a private dependency): only loaders include it.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cuboid::model::yaml {

/// "plan" + "tp" -> "plan.tp"; "" + "tp" -> "tp".
std::string join_path(const std::string& path, const std::string& key);

/// " (valid: a, b, c; did you mean 'b'?)" for an unknown key: Megatron-LM aliases ("mbs"), edit distance, then
/// abbreviations ("nvlink_bw" -> "nvlink_bandwidth", by comparing with the keys' prefixes).
std::string key_hint(const std::string& key, const std::vector<std::string>& allowed);

/// Parses the file; InputError "<path>: cannot read file" or "<path>:<line>:<col>: <yaml error>".
YAML::Node load_file(const std::string& path);

/// Short rendering of a node for messages: the scalar, "a mapping", "a sequence" or "null".
std::string describe(const YAML::Node& node);

/// Throws InputError unless `node` is a mapping whose keys are unique scalars in `allowed`
/// (unknown keys get the list of valid keys and a did-you-mean hint).
void check_mapping(const YAML::Node& node, const std::string& where, const std::string& path,
                   const std::vector<std::string>& allowed);

/// Plain (unquoted) integer scalar, e.g. `tp: 2`. Quoted numbers, floats, .nan are rejected.
std::int64_t read_int(const YAML::Node& node, const std::string& where, const std::string& path);
/// read_int, then > 0.
std::int64_t read_positive_int(const YAML::Node& node, const std::string& where, const std::string& path);
/// read_positive_int that fits an int (GPU and parallel sizes).
int read_positive_int32(const YAML::Node& node, const std::string& where, const std::string& path);
/// read_int, then >= 0 (0 meaning "not set" for optional overrides).
int read_non_negative_int32(const YAML::Node& node, const std::string& where, const std::string& path);
/// Finite plain number (rejects .nan, .inf, quoted numbers), then > 0.
double read_positive_double(const YAML::Node& node, const std::string& where, const std::string& path);
/// true / false (plain scalars only).
bool read_bool(const YAML::Node& node, const std::string& where, const std::string& path);
/// Non-empty scalar string.
std::string read_string(const YAML::Node& node, const std::string& where, const std::string& path);

} // namespace cuboid::model::yaml
