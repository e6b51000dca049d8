// ZeroShards implementation (see zero_shards.hpp). A gather or reduce-scatter over a list of parameters is one
// collective on a packed buffer: block r holds piece r of every listed parameter, each padded to its chunk c, so
// MPI's equal-block all-gather / reduce-scatter moves exactly the pieces each rank owns.
#include "exec/zero_shards.hpp"

#include "model/errors.hpp"

#include <algorithm>
#include <limits>

namespace cuboid::exec {

ZeroShards::ZeroShards(ParamSet& params, int dp_size, int dp_rank, bool shard_params)
    : params_(params), dp_size_(dp_size), shard_params_(shard_params) {
  CUBOID_ASSERT(dp_size > 0 && dp_rank >= 0 && dp_rank < dp_size, "dp rank {} of {}", dp_rank, dp_size);
  const auto dp = static_cast<std::size_t>(dp_size);
  std::size_t offset = 0;
  for (const ParamInfo& info : params.infos()) {
    Piece piece;
    piece.chunk = (info.size() + dp - 1) / dp;
    piece.begin = std::min(info.size(), piece.chunk * static_cast<std::size_t>(dp_rank));
    piece.size = std::min(piece.chunk, info.size() - piece.begin);
    piece.offset = offset;
    offset += piece.size;
    pieces_.push_back(piece);
  }
  values_.assign(offset, 0.0f);
  grads_.assign(offset, 0.0f);
  m_.assign(offset, 0.0f);
  v_.assign(offset, 0.0f);
  for (int idx = 0; idx < static_cast<int>(pieces_.size()); ++idx) {
    const Piece& piece = pieces_[static_cast<std::size_t>(idx)];
    const float* full = params.value(idx) + piece.begin;
    std::copy(full, full + piece.size, values_.begin() + static_cast<std::ptrdiff_t>(piece.offset));
  }
  gathered_.assign(pieces_.size(), 0);
  is_dirty_.assign(pieces_.size(), false);
  params.release_optimizer_state();
  if (shard_params_) {
    reshard_all();
  }
}

std::span<float> ZeroShards::piece(std::vector<float>& buffer, int idx) {
  const Piece& p = pieces_.at(static_cast<std::size_t>(idx));
  return std::span<float>(buffer).subspan(p.offset, p.size);
}

void ZeroShards::poison(int idx) {
  const std::size_t size = params_.info(idx).size();
  std::fill(params_.value(idx), params_.value(idx) + size, std::numeric_limits<float>::quiet_NaN());
}

void ZeroShards::gather(Communicator& dp, const std::vector<int>& param_indices) {
  std::size_t block = 0;
  for (const int idx : param_indices) {
    block += pieces_.at(static_cast<std::size_t>(idx)).chunk;
  }
  std::vector<float> mine(block, 0.0f);
  std::size_t at = 0;
  for (const int idx : param_indices) {
    const Piece& p = pieces_[static_cast<std::size_t>(idx)];
    std::copy_n(values_.begin() + static_cast<std::ptrdiff_t>(p.offset), p.size,
                mine.begin() + static_cast<std::ptrdiff_t>(at));
    at += p.chunk;
  }
  std::vector<float> all(block * static_cast<std::size_t>(dp_size_));
  dp.all_gather(mine, all);
  for (int rank = 0; rank < dp_size_; ++rank) {
    std::size_t in_block = 0;
    for (const int idx : param_indices) {
      const Piece& p = pieces_[static_cast<std::size_t>(idx)];
      const std::size_t size = params_.info(idx).size();
      const std::size_t begin = std::min(size, p.chunk * static_cast<std::size_t>(rank));
      const std::size_t count = std::min(p.chunk, size - begin);
      std::copy_n(all.begin() + static_cast<std::ptrdiff_t>(block * static_cast<std::size_t>(rank) + in_block), count,
                  params_.value(idx) + begin);
      in_block += p.chunk;
    }
  }
  for (const int idx : param_indices) {
    ++gathered_[static_cast<std::size_t>(idx)];
  }
}

void ZeroShards::release(const std::vector<int>& param_indices) {
  for (const int idx : param_indices) {
    int& count = gathered_.at(static_cast<std::size_t>(idx));
    CUBOID_ASSERT(count > 0, "parameter {} released without a gather", params_.info(idx).name);
    if (--count == 0 && shard_params_) {
      poison(idx);
    }
  }
}

void ZeroShards::gather_all(Communicator& dp) {
  std::vector<int> all(pieces_.size());
  for (std::size_t idx = 0; idx < all.size(); ++idx) {
    all[idx] = static_cast<int>(idx);
  }
  gather(dp, all);
  for (const int idx : all) {
    --gathered_[static_cast<std::size_t>(idx)]; // values stay until reshard_all()
  }
}

void ZeroShards::reshard_all() {
  for (int idx = 0; idx < static_cast<int>(pieces_.size()); ++idx) {
    if (gathered_[static_cast<std::size_t>(idx)] == 0) {
      poison(idx);
    }
  }
}

void ZeroShards::mark_dirty(const std::vector<int>& param_indices) {
  for (const int idx : param_indices) {
    if (!is_dirty_.at(static_cast<std::size_t>(idx))) {
      is_dirty_[static_cast<std::size_t>(idx)] = true;
      dirty_.push_back(idx);
    }
  }
}

void ZeroShards::scatter_dirty(Communicator& dp) {
  if (dirty_.empty()) {
    return;
  }
  std::size_t block = 0;
  for (const int idx : dirty_) {
    block += pieces_[static_cast<std::size_t>(idx)].chunk;
  }
  std::vector<float> all(block * static_cast<std::size_t>(dp_size_), 0.0f);
  for (int rank = 0; rank < dp_size_; ++rank) {
    std::size_t in_block = 0;
    for (const int idx : dirty_) {
      const Piece& p = pieces_[static_cast<std::size_t>(idx)];
      const std::size_t size = params_.info(idx).size();
      const std::size_t begin = std::min(size, p.chunk * static_cast<std::size_t>(rank));
      const std::size_t count = std::min(p.chunk, size - begin);
      std::copy_n(params_.grad(idx) + begin, count,
                  all.begin() + static_cast<std::ptrdiff_t>(block * static_cast<std::size_t>(rank) + in_block));
      in_block += p.chunk;
    }
  }
  std::vector<float> mine(block);
  dp.reduce_scatter(all, mine);
  std::size_t at = 0;
  for (const int idx : dirty_) {
    const Piece& p = pieces_[static_cast<std::size_t>(idx)];
    for (std::size_t e = 0; e < p.size; ++e) {
      grads_[p.offset + e] += mine[at + e];
    }
    at += p.chunk;
    std::fill(params_.grad(idx), params_.grad(idx) + params_.info(idx).size(), 0.0f);
    is_dirty_[static_cast<std::size_t>(idx)] = false;
  }
  dirty_.clear();
}

void ZeroShards::zero_grads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

} // namespace cuboid::exec
