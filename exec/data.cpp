// Deterministic token stream (synthetic bigram rule or a token file).
#include "exec/data.hpp"

#include "exec/init.hpp"
#include "model/errors.hpp"

#include <fmt/format.h>

#include <fstream>

namespace cuboid::exec {

namespace {
constexpr double FOLLOW_RULE_PROBABILITY = 0.75; // P(next = a * prev + c mod V); otherwise uniform
constexpr std::uint64_t STEP_SALT = 0x5851F42D4C957F2DULL;
} // namespace

TokenSource::TokenSource(std::int64_t vocab_size, std::int64_t seq_length, std::uint64_t seed,
                         const std::string& data_file)
    : vocab_(vocab_size), seq_(seq_length), seed_(seed) {
  if (data_file.empty()) {
    return;
  }
  std::ifstream in(data_file, std::ios::binary);
  if (!in) {
    throw InputError(input_message(data_file, "", "cannot open the token file (expected raw little-endian uint16 tokens)"));
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  file_tokens_.resize(bytes.size() / 2);
  for (std::size_t idx = 0; idx < file_tokens_.size(); ++idx) {
    const auto lo = static_cast<std::uint8_t>(bytes[2 * idx]);
    const auto hi = static_cast<std::uint8_t>(bytes[2 * idx + 1]);
    file_tokens_[idx] = static_cast<std::uint16_t>(lo | (hi << 8U));
    if (file_tokens_[idx] >= vocab_) {
      throw InputError(input_message(data_file, fmt::format("token[{}]", idx),
                                     fmt::format("token {} is outside the vocabulary [0, {})", file_tokens_[idx], vocab_)));
    }
  }
  if (static_cast<std::int64_t>(file_tokens_.size()) < seq_ + 1) {
    throw InputError(input_message(data_file, "", fmt::format("holds {} tokens, fewer than seq_length + 1 = {}",
                                                              file_tokens_.size(), seq_ + 1)));
  }
}

std::vector<std::int32_t> TokenSource::sequence(std::int64_t step, std::int64_t index) const {
  const std::uint64_t key = mix64(seed_ ^ mix64(static_cast<std::uint64_t>(step) * STEP_SALT)) ^
                            mix64(static_cast<std::uint64_t>(index));
  const auto length = static_cast<std::size_t>(seq_ + 1);
  std::vector<std::int32_t> tokens(length);
  const auto vocab = static_cast<std::uint64_t>(vocab_);
  if (!file_tokens_.empty()) {
    const auto windows = static_cast<std::uint64_t>(file_tokens_.size()) - length + 1;
    const std::uint64_t start = mix64(key) % windows;
    for (std::size_t pos = 0; pos < length; ++pos) {
      tokens[pos] = file_tokens_[start + pos];
    }
    return tokens;
  }
  // The rule's constants depend on the seed only, so every sequence teaches the same bigram table.
  const std::uint64_t mult = (mix64(seed_ + 1) % vocab) | 1U;
  const std::uint64_t shift = mix64(seed_ + 2) % vocab;
  std::uint64_t prev = mix64(key) % vocab;
  tokens[0] = static_cast<std::int32_t>(prev);
  for (std::size_t pos = 1; pos < length; ++pos) {
    if (uniform01(key, 2 * pos) < FOLLOW_RULE_PROBABILITY) {
      prev = (mult * prev + shift) % vocab;
    } else {
      prev = mix64(key ^ (2 * pos + 1)) % vocab;
    }
    tokens[pos] = static_cast<std::int32_t>(prev);
  }
  return tokens;
}

MicroBatch TokenSource::microbatch(std::int64_t step, std::int64_t global_microbatch, std::int64_t batch) const {
  MicroBatch mb;
  const auto rows = static_cast<std::size_t>(seq_ * batch);
  mb.inputs.resize(rows);
  mb.targets.resize(rows);
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto tokens = sequence(step, global_microbatch * batch + b);
    for (std::int64_t t = 0; t < seq_; ++t) {
      const auto row = static_cast<std::size_t>(t * batch + b);
      mb.inputs[row] = tokens[static_cast<std::size_t>(t)];
      mb.targets[row] = tokens[static_cast<std::size_t>(t + 1)];
    }
  }
  return mb;
}

MicroBatch select_positions(const MicroBatch& whole, const std::vector<std::int64_t>& positions, std::int64_t batch) {
  const auto batch_size = static_cast<std::size_t>(batch);
  MicroBatch mine;
  mine.inputs.reserve(positions.size() * batch_size);
  mine.targets.reserve(positions.size() * batch_size);
  for (const std::int64_t pos : positions) {
    for (std::size_t b = 0; b < batch_size; ++b) {
      const std::size_t row = static_cast<std::size_t>(pos) * batch_size + b;
      mine.inputs.push_back(whole.inputs.at(row));
      mine.targets.push_back(whole.targets.at(row));
    }
  }
  return mine;
}

} // namespace cuboid::exec
