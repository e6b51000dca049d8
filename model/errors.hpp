// Error types shared by every cuboid library: bad user input, infeasible plans, broken invariants.
// InputError names the file, the key path, the bad value and what would be valid (STYLE.md section 5).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace cuboid {

/// Malformed or inconsistent user input (files, CLI flags). The CLI maps it to exit code 2.
class InputError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// A well-formed request that cannot be carried out (OOM, sizes that do not divide, too many tasks).
/// Searches catch it and skip the plan with the message as the reason.
class InfeasibleError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// An internal invariant was violated: a bug in cuboid, never triggered by user input.
class InternalError : public std::logic_error {
public:
  using std::logic_error::logic_error;
};

/// Builds "where: field: message" with optional "(did you mean 'x'?)" hint.
/// `where` is a file name or "command line"; `field` is the key path (e.g. "plan.tp").
std::string input_message(std::string_view where, std::string_view field, std::string_view message);

/// Closest candidate by edit distance, or "" when nothing is reasonably close.
std::string did_you_mean(std::string_view value, const std::vector<std::string>& candidates);

/// Formats a "did you mean" hint plus the list of valid values: " (valid: a, b, c; did you mean 'b'?)".
std::string valid_values_hint(std::string_view value, const std::vector<std::string>& candidates);

} // namespace cuboid

/// Always-on invariant check (never disabled by NDEBUG). User input must never trigger it.
#define CUBOID_ASSERT(cond, ...)                                                                                    \
  do {                                                                                                              \
    if (!(cond)) {                                                                                                  \
      throw ::cuboid::InternalError(fmt::format("internal error at {}:{}: assertion '{}' failed: {}", __FILE__,     \
                                                __LINE__, #cond, fmt::format(__VA_ARGS__)));                        \
    }                                                                                                               \
  } while (false)
