// exec::cuda::to_column_major: the column-major problem handed to cuBLASLt computes the row-major product the CPU
// linear layer computes. Oracle: a naive column-major GEMM (what cublasLtMatmul computes by definition, cuBLAS
// documentation "cublasLtMatmul") on the mapped problem, against a naive row-major GEMM; memory must match exactly.
// The bias: one value per row-major column is, after the mapping, one value per row of the column-major D, which is
// what CUBLASLT_EPILOGUE_BIAS adds (cuBLASLt documentation, cublasLtEpilogue_t).
#include "exec/cuda/gemm.hpp"

#include <catch2/catch.hpp>

#include <vector>

using cuboid::exec::cuda::GemmArgs;
using cuboid::exec::cuda::GemmDType;

namespace {

// X (rows, cols) column-major with leading dimension ld, used as op(X).
float col_major_op(const float* x, std::int64_t ld, bool trans, std::int64_t row, std::int64_t col) {
  return trans ? x[col + row * ld] : x[row + col * ld];
}

} // namespace

TEST_CASE("exec::cuda::to_column_major: row-major C = op(A) op(B) (+ bias per column)", "[exec][cuda]") {
  const bool trans_a = GENERATE(false, true);
  const bool trans_b = GENERATE(false, true);
  const bool use_bias = GENERATE(false, true);
  CAPTURE(trans_a, trans_b, use_bias);
  const std::int64_t m = 3;
  const std::int64_t n = 5;
  const std::int64_t k = 4;
  std::vector<float> a(static_cast<std::size_t>(m * k));
  std::vector<float> b(static_cast<std::size_t>(k * n));
  for (std::size_t idx = 0; idx < a.size(); ++idx) {
    a[idx] = static_cast<float>(idx % 7) - 3.0f;
  }
  for (std::size_t idx = 0; idx < b.size(); ++idx) {
    b[idx] = static_cast<float>(idx % 5) * 0.5f - 1.0f;
  }
  const std::vector<float> bias = {10.0f, 20.0f, 30.0f, 40.0f, 50.0f}; // (n): one per row-major column
  // Row-major reference. Stored shapes: A (m, k) or (k, m) if trans_a; B (k, n) or (n, k) if trans_b.
  const auto a_at = [&](std::int64_t row, std::int64_t col) {
    return trans_a ? a[static_cast<std::size_t>(col * m + row)] : a[static_cast<std::size_t>(row * k + col)];
  };
  const auto b_at = [&](std::int64_t row, std::int64_t col) {
    return trans_b ? b[static_cast<std::size_t>(col * k + row)] : b[static_cast<std::size_t>(row * n + col)];
  };
  std::vector<float> expected(static_cast<std::size_t>(m * n), 0.0f);
  for (std::int64_t row = 0; row < m; ++row) {
    for (std::int64_t col = 0; col < n; ++col) {
      float acc = 0.0f;
      for (std::int64_t inner = 0; inner < k; ++inner) {
        acc += a_at(row, inner) * b_at(inner, col);
      }
      expected[static_cast<std::size_t>(row * n + col)] = acc + (use_bias ? bias[static_cast<std::size_t>(col)] : 0.0f);
    }
  }
  GemmArgs args;
  args.m = m;
  args.n = n;
  args.k = k;
  args.trans_a = trans_a;
  args.trans_b = trans_b;
  args.a = a.data();
  args.b = b.data();
  args.bias = use_bias ? bias.data() : nullptr;
  const auto p = cuboid::exec::cuda::to_column_major(args);
  CHECK(p.m == n);
  CHECK(p.n == m);
  CHECK(p.ld_c == n);
  CHECK(p.bias == args.bias);
  // CUBLASLT_EPILOGUE_BIAS: D(row, col) += bias[row], the bias vector as long as D has rows (p.m).
  const auto* bias_per_d_row = static_cast<const float*>(p.bias);
  std::vector<float> got(static_cast<std::size_t>(m * n), 0.0f);
  const auto* first = static_cast<const float*>(p.first);
  const auto* second = static_cast<const float*>(p.second);
  for (std::int64_t row = 0; row < p.m; ++row) {
    for (std::int64_t col = 0; col < p.n; ++col) {
      float acc = 0.0f;
      for (std::int64_t inner = 0; inner < p.k; ++inner) {
        acc += col_major_op(first, p.ld_first, p.trans_first, row, inner) *
               col_major_op(second, p.ld_second, p.trans_second, inner, col);
      }
      got[static_cast<std::size_t>(row + col * p.ld_c)] = acc + (use_bias ? bias_per_d_row[row] : 0.0f);
    }
  }
  CHECK(got == expected);
}

TEST_CASE("exec::cuda::can_implement and workspace_bytes", "[exec][cuda]") {
  float dummy = 0.0f;
  GemmArgs args;
  args.m = 128;
  args.n = 256;
  args.k = 64;
  args.a = &dummy;
  args.b = &dummy;
  args.c = &dummy;
  CHECK(cuboid::exec::cuda::can_implement(args).empty());
  args.c_type = GemmDType::F32; // bf16 x bf16 -> fp32 (weight-gradient accumulation)
  CHECK(cuboid::exec::cuda::can_implement(args).empty());
  args.a_type = GemmDType::F32; // fp32 x bf16: not supported
  CHECK_THAT(cuboid::exec::cuda::can_implement(args), Catch::Contains("unsupported dtypes"));
  args.a_type = GemmDType::BF16;
  args.k = 0;
  CHECK_THAT(cuboid::exec::cuda::can_implement(args), Catch::Contains("must be positive"));
  args.k = 64;
  args.b = nullptr;
  CHECK_THAT(cuboid::exec::cuda::can_implement(args), Catch::Contains("non-null"));
  CHECK(cuboid::exec::cuda::workspace_bytes(args) == (32u << 20));
}

TEST_CASE("exec::cuda::can_implement and to_column_major: bias and c_in", "[exec][cuda]") {
  float dummy = 0.0f;
  float other = 0.0f;
  GemmArgs args;
  args.m = 128;
  args.n = 256;
  args.k = 64;
  args.a = &dummy;
  args.b = &dummy;
  args.c = &dummy;
  SECTION("a bias needs bf16 x bf16 -> bf16") {
    args.bias = &dummy;
    CHECK(cuboid::exec::cuda::can_implement(args).empty());
    args.c_type = GemmDType::F32; // the weight gradient's fp32 output: no bias epilogue
    CHECK_THAT(cuboid::exec::cuda::can_implement(args), Catch::Contains("bias") && Catch::Contains("c fp32"));
    args.a_type = args.b_type = GemmDType::F32;
    CHECK_THAT(cuboid::exec::cuda::can_implement(args), Catch::Contains("a bias needs bf16 a, b and c"));
    args.bias = nullptr;
    CHECK(cuboid::exec::cuda::can_implement(args).empty()); // fp32 x fp32 -> fp32 without a bias is fine
  }
  SECTION("c_in is the C operand; null means in place") {
    CHECK(cuboid::exec::cuda::to_column_major(args).c_in == &dummy);
    args.c_in = &other;
    args.beta = 1.0f;
    CHECK(cuboid::exec::cuda::can_implement(args).empty());
    CHECK(cuboid::exec::cuda::to_column_major(args).c_in == &other);
  }
}
