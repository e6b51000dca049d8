// Strict typed YAML field reading for the loaders (see yaml_fields.hpp). Numbers are parsed from the scalar text with
// std::from_chars, not yaml-cpp's as<T>(), so that "2.5" for an int, "1e3" for an int and ".nan" never slip through.
#include "model/yaml_fields.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

namespace cuboid::model::yaml {

namespace {
// yaml-cpp tags plain scalars "?" and quoted ones "!": a quoted "8" is a string, not a number.
bool is_plain_scalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() != "!"; }

[[noreturn]] void fail(const std::string& where, const std::string& path, const std::string& message) {
  throw InputError(input_message(where, path, message));
}

void require_scalar(const YAML::Node& node, const std::string& where, const std::string& path, const char* expected) {
  if (!node.IsDefined() || node.IsNull()) {
    fail(where, path, fmt::format("missing value (expected {})", expected));
  }
  if (!is_plain_scalar(node)) {
    fail(where, path, fmt::format("{} is not valid (expected {})", describe(node), expected));
  }
}
} // namespace

// valid_values_hint for keys, which are often abbreviated ("nvlink_bw", "hiden"): when no whole key is close, the
// typed text is compared with the keys' prefixes of about its length.
std::string key_hint(const std::string& key, const std::vector<std::string>& allowed) {
  // Megatron-LM flag names and the CLI's short forms are common in hand-written files.
  static const std::vector<std::pair<std::string, std::string>> ALIASES = {
      {"mbs", "micro_batch_size"},
      {"gbs", "global_batch_size"},
      {"tensor_model_parallel_size", "tp"},
      {"pipeline_model_parallel_size", "pp"},
      {"data_parallel_size", "dp"},
      {"virtual_pipeline_model_parallel_size", "vp"},
      {"world_size", "num_gpus"},
      {"recompute_granularity", "recompute"},
      {"num_key_value_heads", "num_query_groups"},
      {"num_hidden_layers", "num_layers"},
      {"intermediate_size", "ffn_hidden_size"}};
  std::string suggestion;
  for (const auto& [alias, target] : ALIASES) {
    if (key == alias && std::find(allowed.begin(), allowed.end(), target) != allowed.end()) {
      suggestion = target;
    }
  }
  if (suggestion.empty()) {
    suggestion = did_you_mean(key, allowed);
  }
  if (suggestion.empty()) {
    std::vector<std::string> prefixes;
    std::vector<std::string> owners;
    for (const auto& candidate : allowed) {
      for (std::size_t length = key.size() > 1 ? key.size() - 1 : 1; length <= key.size() + 1; ++length) {
        if (length < candidate.size()) {
          prefixes.push_back(candidate.substr(0, length));
          owners.push_back(candidate);
        }
      }
    }
    const std::string prefix = did_you_mean(key, prefixes);
    if (!prefix.empty()) {
      suggestion = owners[static_cast<std::size_t>(std::find(prefixes.begin(), prefixes.end(), prefix) -
                                                   prefixes.begin())];
    }
  }
  return fmt::format(" (valid: {}{})", fmt::join(allowed, ", "),
                     suggestion.empty() ? std::string{} : fmt::format("; did you mean '{}'?", suggestion));
}

std::string join_path(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

YAML::Node load_file(const std::string& path) {
  try {
    return YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw InputError(input_message(path, "", "cannot read file"));
  } catch (const YAML::Exception& error) {
    // Marks are 0-based in yaml-cpp; editors count from 1.
    throw InputError(fmt::format("{}:{}:{}: invalid YAML: {}", path, error.mark.line + 1, error.mark.column + 1,
                                 error.msg));
  }
}

std::string describe(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) {
    return "null";
  }
  if (node.IsMap()) {
    return "a mapping";
  }
  if (node.IsSequence()) {
    return "a sequence";
  }
  return node.Tag() == "!" ? fmt::format("\"{}\" (a quoted string)", node.Scalar()) : node.Scalar();
}

void check_mapping(const YAML::Node& node, const std::string& where, const std::string& path,
                   const std::vector<std::string>& allowed) {
  if (!node.IsMap()) {
    fail(where, path.empty() ? std::string{} : path,
         fmt::format("{} is not valid (expected a mapping with keys: {})", describe(node), fmt::join(allowed, ", ")));
  }
  std::set<std::string> seen;
  for (const auto& entry : node) {
    if (!entry.first.IsScalar()) {
      fail(where, path, fmt::format("key {} is not valid (expected one of: {})", describe(entry.first),
                                    fmt::join(allowed, ", ")));
    }
    const std::string& key = entry.first.Scalar();
    const std::string key_path = join_path(path, key);
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      fail(where, key_path, fmt::format("unknown key '{}'{}", key, key_hint(key, allowed)));
    }
    if (!seen.insert(key).second) {
      fail(where, key_path, "duplicate key (each key may appear once)");
    }
  }
}

std::int64_t read_int(const YAML::Node& node, const std::string& where, const std::string& path) {
  require_scalar(node, where, path, "an integer");
  const std::string& text = node.Scalar();
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size()) {
    fail(where, path, fmt::format("{} is not valid (expected an integer)", text));
  }
  return value;
}

std::int64_t read_positive_int(const YAML::Node& node, const std::string& where, const std::string& path) {
  const std::int64_t value = read_int(node, where, path);
  if (value <= 0) {
    fail(where, path, fmt::format("{} is not valid (expected a positive integer)", value));
  }
  return value;
}

int read_positive_int32(const YAML::Node& node, const std::string& where, const std::string& path) {
  const std::int64_t value = read_positive_int(node, where, path);
  if (value > std::numeric_limits<int>::max()) {
    fail(where, path, fmt::format("{} is too large (expected at most {})", value, std::numeric_limits<int>::max()));
  }
  return static_cast<int>(value);
}

int read_non_negative_int32(const YAML::Node& node, const std::string& where, const std::string& path) {
  const std::int64_t value = read_int(node, where, path);
  if (value < 0 || value > std::numeric_limits<int>::max()) {
    fail(where, path, fmt::format("{} is not valid (expected an integer >= 0; 0 means not set)", value));
  }
  return static_cast<int>(value);
}

double read_positive_double(const YAML::Node& node, const std::string& where, const std::string& path) {
  require_scalar(node, where, path, "a positive number");
  const std::string& text = node.Scalar();
  double value = 0.0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size() || !std::isfinite(value) || value <= 0.0) {
    fail(where, path, fmt::format("{} is not valid (expected a finite positive number)", text));
  }
  return value;
}

bool read_bool(const YAML::Node& node, const std::string& where, const std::string& path) {
  require_scalar(node, where, path, "true or false");
  const std::string& text = node.Scalar();
  if (text == "true" || text == "True") {
    return true;
  }
  if (text == "false" || text == "False") {
    return false;
  }
  fail(where, path, fmt::format("{} is not valid (expected true or false)", text));
}

std::string read_string(const YAML::Node& node, const std::string& where, const std::string& path) {
  if (!node.IsDefined() || node.IsNull() || !node.IsScalar() || node.Scalar().empty()) {
    fail(where, path, fmt::format("{} is not valid (expected a non-empty string)", describe(node)));
  }
  return node.Scalar();
}

} // namespace cuboid::model::yaml
