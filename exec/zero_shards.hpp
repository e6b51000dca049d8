// ZeroShards: the ZeRO-2/3 state of one DP rank on the CPU backend. Every parameter tensor of the rank's ParamSet is
// split flat into dp equal pieces (the last one padded), DP rank r owning elements [r*c, (r+1)*c), c = ceil(n/dp).
// The rank keeps only its pieces of the fp32 master values, the reduced gradients and the AdamW moments; the
// ParamSet's full buffers are scratch: the gradients of the units that ran backward since the last reduce-scatter,
// and (ZeRO-3) the parameters of the gathered units, every other element poisoned with NaN, so a computation that
// reads a parameter that was not all-gathered first breaks the loss instead of silently using stale values.
#pragma once

#include "exec/communicator.hpp"
#include "exec/param_set.hpp"

#include <cstddef>
#include <span>
#include <vector>

namespace cuboid::exec {

class ZeroShards {
public:
  /// Takes this rank's pieces of `params`' current values (all DP ranks start from the same values). With
  /// `shard_params` (ZeRO-3) the full values are poisoned until gathered; otherwise (ZeRO-2) they stay replicated.
  /// Drops the ParamSet's full AdamW moments (the sharded ones live here). `params` must outlive this object.
  ZeroShards(ParamSet& params, int dp_size, int dp_rank, bool shard_params);

  /// ZeRO-3: all-gathers the listed parameters over `dp` into the full values (one collective for the list).
  /// Gathers are counted per parameter: release() poisons a parameter again when its last gather is released.
  void gather(Communicator& dp, const std::vector<int>& param_indices);
  void release(const std::vector<int>& param_indices);
  /// All parameters into the full values (ZeRO-2 after the optimizer; weights read back by tests). Collective.
  void gather_all(Communicator& dp);
  /// ZeRO-3: poisons every parameter that is not held by a gather.
  void reshard_all();

  /// The listed parameters got gradient contributions in the full gradient buffer (a unit's backward).
  void mark_dirty(const std::vector<int>& param_indices);
  /// Reduce-scatters the gradients of every dirty parameter over `dp` (one collective), adds this rank's piece to
  /// its reduced-gradient shard and zeroes those full gradients. Every DP member must call it with the same dirty
  /// list (the same program). A no-op when nothing is dirty on every member.
  void scatter_dirty(Communicator& dp);
  /// Zeroes the reduced-gradient shards (start of a step).
  void zero_grads();

  /// This rank's piece of parameter `idx` (may be empty when dp > n): master values, reduced grads, moments.
  [[nodiscard]] std::span<float> values(int idx) { return piece(values_, idx); }
  [[nodiscard]] std::span<float> grads(int idx) { return piece(grads_, idx); }
  [[nodiscard]] std::span<float> moment1(int idx) { return piece(m_, idx); }
  [[nodiscard]] std::span<float> moment2(int idx) { return piece(v_, idx); }
  [[nodiscard]] bool shards_params() const { return shard_params_; }
  /// Elements kept per rank (the sum of the pieces), for tests of the 1/dp claim.
  [[nodiscard]] std::size_t shard_elements() const { return values_.size(); }

private:
  struct Piece {
    std::size_t chunk = 0;   // c = ceil(n / dp), elements per DP rank (padded)
    std::size_t begin = 0;   // this rank's first element within the tensor
    std::size_t size = 0;    // elements this rank owns: min(c, n - begin), >= 0
    std::size_t offset = 0;  // into the shard buffers
  };
  std::span<float> piece(std::vector<float>& buffer, int idx);
  void poison(int idx);

  ParamSet& params_;
  int dp_size_;
  bool shard_params_;
  std::vector<Piece> pieces_;       // per parameter
  std::vector<float> values_;       // fp32 master pieces
  std::vector<float> grads_;        // reduced gradient pieces, accumulated over micro-batches
  std::vector<float> m_;
  std::vector<float> v_;
  std::vector<int> gathered_;       // per parameter: gathers not yet released
  std::vector<int> dirty_;          // parameter indices, in marking order, no duplicates
  std::vector<bool> is_dirty_;
};

} // namespace cuboid::exec
