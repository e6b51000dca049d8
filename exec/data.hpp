// TokenSource: the deterministic training data. Sequence g (0 <= g < global batch) of step t is a fixed function
// of (seed, t, g), so every plan consumes the same global batch: global micro-batch j holds sequences
// j*b .. j*b+b-1 and DP rank d takes global micro-batches d*m .. d*m+m-1 (Megatron's order).
// Synthetic data follows a noisy affine bigram rule (learnable, so the loss falls); a file of raw little-endian
// uint16 tokens can be used instead (windows at seeded offsets).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cuboid::exec {

/// One micro-batch in Megatron's [s, b] order: inputs[t * B + b] = token t of sequence b, targets the next token.
struct MicroBatch {
  std::vector<std::int32_t> inputs;  // (T * B)
  std::vector<std::int32_t> targets; // (T * B)
};

/// --- context parallelism --- The rows of `whole` ([s, b] order, `batch` columns per position) at `positions`, in
/// that order: a CP rank's share of a micro-batch (exec::context_parallel_positions).
[[nodiscard]] MicroBatch select_positions(const MicroBatch& whole, const std::vector<std::int64_t>& positions,
                                          std::int64_t batch);

class TokenSource {
public:
  /// Throws InputError if `data_file` is given but cannot be read or holds fewer than seq + 1 tokens, or has a
  /// token >= vocab.
  TokenSource(std::int64_t vocab_size, std::int64_t seq_length, std::uint64_t seed, const std::string& data_file = {});

  /// seq + 1 tokens of sequence `index` of step `step`.
  [[nodiscard]] std::vector<std::int32_t> sequence(std::int64_t step, std::int64_t index) const;
  /// Global micro-batch `global_microbatch` of size `batch` at `step`.
  [[nodiscard]] MicroBatch microbatch(std::int64_t step, std::int64_t global_microbatch, std::int64_t batch) const;

private:
  std::int64_t vocab_;
  std::int64_t seq_;
  std::uint64_t seed_;
  std::vector<std::uint16_t> file_tokens_;
};

} // namespace cuboid::exec
