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
      fail(where, key_path, fmt::format("unknown key '{}'{}", key, valid_values_hint(key, allowed)));
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
