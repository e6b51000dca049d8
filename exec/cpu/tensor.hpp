// Dense fp32 tensor types of the CPU backend: row-major Eigen matrices (rows = tokens in Megatron's [s, b] order:
// row = t * B + b) and maps over the flat parameter/gradient buffers.
#pragma once

#include <Eigen/Core>

#include <cstdint>

namespace cuboid::exec::cpu {

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowVec = Eigen::Matrix<float, 1, Eigen::Dynamic>;
using ColVec = Eigen::VectorXf;
using MatRef = Eigen::Ref<Mat>;
using ConstMatRef = Eigen::Ref<const Mat>;
using RowVecRef = Eigen::Ref<RowVec>;
using ConstRowVecRef = Eigen::Ref<const RowVec>;
using MatMap = Eigen::Map<Mat>;
using ConstMatMap = Eigen::Map<const Mat>;

/// Matrix view over `rows * cols` contiguous floats (a parameter or gradient inside a flat buffer).
inline MatMap map_mat(float* data, std::int64_t rows, std::int64_t cols) { return {data, rows, cols}; }
inline ConstMatMap map_mat(const float* data, std::int64_t rows, std::int64_t cols) { return {data, rows, cols}; }

} // namespace cuboid::exec::cpu
