// TP conjugate operators: thin wrappers that pass contiguous row blocks to the communicator.
#include "exec/cpu/tp_ops.hpp"

#include "model/errors.hpp"

#include <span>

namespace cuboid::exec::cpu {

namespace {
std::size_t count(const ConstMatRef& m) { return static_cast<std::size_t>(m.size()); }
} // namespace

void all_reduce_rows(Communicator& tp, MatRef x) {
  CUBOID_ASSERT(x.outerStride() == x.cols(), "all_reduce_rows needs contiguous rows (stride {}, cols {})",
                x.outerStride(), x.cols());
  tp.all_reduce(std::span<float>(x.data(), static_cast<std::size_t>(x.size())), ReduceOp::Sum);
}

void all_gather_rows(Communicator& tp, const ConstMatRef& x, Mat& out) {
  CUBOID_ASSERT(x.outerStride() == x.cols(), "all_gather_rows needs contiguous rows");
  out.resize(x.rows() * tp.size(), x.cols());
  tp.all_gather(std::span<const float>(x.data(), count(x)), std::span<float>(out.data(), static_cast<std::size_t>(out.size())));
}

void reduce_scatter_rows(Communicator& tp, const ConstMatRef& x, Mat& out) {
  CUBOID_ASSERT(x.outerStride() == x.cols(), "reduce_scatter_rows needs contiguous rows");
  CUBOID_ASSERT(x.rows() % tp.size() == 0, "reduce_scatter_rows: {} rows not divisible by tp {}", x.rows(), tp.size());
  out.resize(x.rows() / tp.size(), x.cols());
  tp.reduce_scatter(std::span<const float>(x.data(), count(x)),
                    std::span<float>(out.data(), static_cast<std::size_t>(out.size())));
}

} // namespace cuboid::exec::cpu
