// Embedding lookups and their scatter-add backward.
#include "exec/cpu/embedding.hpp"

namespace cuboid::exec::cpu {

namespace {
bool in_shard(std::int64_t token, std::int64_t vocab_start, std::int64_t rows) {
  return token >= vocab_start && token < vocab_start + rows;
}
} // namespace

void embedding_forward(std::span<const std::int32_t> tokens, const ConstMatRef& table, std::int64_t vocab_start,
                       MatRef out) {
  for (std::size_t row = 0; row < tokens.size(); ++row) {
    const auto r = static_cast<Eigen::Index>(row);
    const std::int64_t token = tokens[row];
    if (in_shard(token, vocab_start, table.rows())) {
      out.row(r) = table.row(token - vocab_start);
    } else {
      out.row(r).setZero();
    }
  }
}

void embedding_backward(std::span<const std::int32_t> tokens, const ConstMatRef& dout, std::int64_t vocab_start,
                        MatRef dtable) {
  for (std::size_t row = 0; row < tokens.size(); ++row) {
    const std::int64_t token = tokens[row];
    if (in_shard(token, vocab_start, dtable.rows())) {
      dtable.row(token - vocab_start) += dout.row(static_cast<Eigen::Index>(row));
    }
  }
}

void position_embedding_forward(const ConstMatRef& pos, std::int64_t first_row, std::int64_t batch, MatRef x) {
  for (Eigen::Index row = 0; row < x.rows(); ++row) {
    x.row(row) += pos.row((first_row + row) / batch);
  }
}

void position_embedding_backward(const ConstMatRef& dx, std::int64_t first_row, std::int64_t batch, MatRef dpos) {
  for (Eigen::Index row = 0; row < dx.rows(); ++row) {
    dpos.row((first_row + row) / batch) += dx.row(row);
  }
}

} // namespace cuboid::exec::cpu
