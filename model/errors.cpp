// Helpers for user-facing error messages: location prefix and "did you mean" suggestions.
#include "model/errors.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>

namespace cuboid {

std::string input_message(std::string_view where, std::string_view field, std::string_view message) {
  if (field.empty()) {
    return fmt::format("{}: {}", where, message);
  }
  return fmt::format("{}: {}: {}", where, field, message);
}

namespace {
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1);
  std::vector<std::size_t> cur(b.size() + 1);
  for (std::size_t col = 0; col <= b.size(); ++col) {
    prev[col] = col;
  }
  for (std::size_t row = 1; row <= a.size(); ++row) {
    cur[0] = row;
    for (std::size_t col = 1; col <= b.size(); ++col) {
      const bool same = std::tolower(static_cast<unsigned char>(a[row - 1])) ==
                        std::tolower(static_cast<unsigned char>(b[col - 1]));
      cur[col] = std::min({prev[col] + 1, cur[col - 1] + 1, prev[col - 1] + (same ? 0U : 1U)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}
} // namespace

std::string did_you_mean(std::string_view value, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_distance = std::string::npos;
  for (const auto& candidate : candidates) {
    const std::size_t distance = edit_distance(value, candidate);
    if (distance < best_distance) {
      best_distance = distance;
      best = candidate;
    }
  }
  // Accept a suggestion only when it is closer than half the length of the typed value (and at most 3 edits).
  const std::size_t limit = std::min<std::size_t>(3, std::max<std::size_t>(1, value.size() / 2));
  return best_distance <= limit ? best : std::string{};
}

std::string valid_values_hint(std::string_view value, const std::vector<std::string>& candidates) {
  std::string hint = fmt::format(" (valid: {}", fmt::join(candidates, ", "));
  const std::string suggestion = did_you_mean(value, candidates);
  if (!suggestion.empty()) {
    hint += fmt::format("; did you mean '{}'?", suggestion);
  }
  hint += ")";
  return hint;
}

} // namespace cuboid
