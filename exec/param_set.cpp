// ParamSet: shard bookkeeping and flat buffers.
#include "exec/param_set.hpp"

#include "model/errors.hpp"

#include <algorithm>

namespace cuboid::exec {

int ParamSet::add(const std::string& name, std::int64_t full_rows, std::int64_t full_cols, TpSplit split,
                  InitKind init, double init_std) {
  CUBOID_ASSERT(!finalized_, "ParamSet::add({}) after finalize()", name);
  ParamInfo p;
  p.name = name;
  p.full_rows = full_rows;
  p.full_cols = full_cols;
  p.split = split;
  p.init = init;
  p.init_std = init_std;
  p.rows = full_rows;
  p.cols = full_cols;
  if (split == TpSplit::Columns) {
    CUBOID_ASSERT(full_cols % tp_size_ == 0, "{}: {} columns not divisible by tp {}", name, full_cols, tp_size_);
    p.cols = full_cols / tp_size_;
    p.col0 = p.cols * tp_rank_;
  } else if (split == TpSplit::Rows) {
    CUBOID_ASSERT(full_rows % tp_size_ == 0, "{}: {} rows not divisible by tp {}", name, full_rows, tp_size_);
    p.rows = full_rows / tp_size_;
    p.row0 = p.rows * tp_rank_;
  }
  p.weight_decay = full_rows > 1 && init == InitKind::Normal;
  infos_.push_back(p);
  return static_cast<int>(infos_.size()) - 1;
}

void ParamSet::finalize(std::uint64_t seed, bool materialize) {
  std::size_t total = 0;
  for (auto& p : infos_) {
    p.offset = total;
    total += p.size();
  }
  finalized_ = true;
  if (!materialize) {
    return;
  }
  values_.assign(total, 0.0f);
  grads_.assign(total, 0.0f);
  m_.assign(total, 0.0f);
  v_.assign(total, 0.0f);
  for (const auto& p : infos_) {
    init_block(seed, p.name, p.init, p.init_std, p.full_cols, p.row0, p.rows, p.col0, p.cols,
               std::span<float>(values_).subspan(p.offset, p.size()));
  }
}

int ParamSet::find(const std::string& name) const {
  const auto it = std::find_if(infos_.begin(), infos_.end(), [&](const ParamInfo& p) { return p.name == name; });
  return it == infos_.end() ? -1 : static_cast<int>(it - infos_.begin());
}

void ParamSet::zero_grads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

void ParamSet::release_optimizer_state() {
  std::vector<float>().swap(m_);
  std::vector<float>().swap(v_);
}

} // namespace cuboid::exec
