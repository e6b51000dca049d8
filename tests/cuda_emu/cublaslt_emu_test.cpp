// The emulator's cuBLASLt (cublaslt_emu.cpp) against a naive double-precision GEMM: every transpose combination and
// dtype on odd sizes with padded leading dimensions, beta != 0 accumulation, in-place C == D, overrun detection, the
// heuristic's supported set and its several algorithms, descriptor attributes, the bias epilogue and the
// CUBOID_EMU_CUBLASLT_NO_EPILOGUE switch; then cuboid's own wrapper exec::cuda::GemmRunner on top of it.
#include "exec/cuda/gemm.hpp"
#include "exec/device_error.hpp"
#include "tests/cuda_emu/emu_runtime.hpp"

#include <catch2/catch.hpp>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <nccl.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

namespace {

namespace cuda = cuboid::exec::cuda;

enum class DType { BF16, F32 };

cudaDataType_t to_cuda(DType t) { return t == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }
std::size_t bytes_of(DType t) { return t == DType::BF16 ? 2 : 4; }

// The value `x` has once stored as `t` (bf16: rounded to nearest even).
float representable(float x, DType t) { return t == DType::BF16 ? __bfloat162float(__float2bfloat16_rn(x)) : x; }

// Deterministic values in [-1, 1), representable in `t`.
std::vector<float> make_values(std::size_t count, DType t, std::uint32_t seed) {
  std::vector<float> values(count);
  std::uint32_t state = seed * 2654435761u + 1u;
  for (float& v : values) {
    state = state * 1664525u + 1013904223u;
    v = representable(static_cast<float>(state >> 8) / static_cast<float>(1u << 23) - 1.0f, t);
  }
  return values;
}

// A device allocation holding `values` as `type`.
class DeviceMatrix {
public:
  DeviceMatrix(const std::vector<float>& values, DType type) : type_(type), count_(values.size()) {
    REQUIRE(cudaMalloc(&ptr_, std::max<std::size_t>(count_, 1) * bytes_of(type)) == cudaSuccess);
    upload(values);
  }
  ~DeviceMatrix() { cudaFree(ptr_); }
  DeviceMatrix(const DeviceMatrix&) = delete;
  DeviceMatrix& operator=(const DeviceMatrix&) = delete;

  void upload(const std::vector<float>& values) {
    if (type_ == DType::BF16) {
      std::vector<__nv_bfloat16> bits(values.size());
      for (std::size_t idx = 0; idx < values.size(); ++idx) {
        bits[idx] = __float2bfloat16_rn(values[idx]);
      }
      REQUIRE(cudaMemcpy(ptr_, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
    } else {
      REQUIRE(cudaMemcpy(ptr_, values.data(), values.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess);
    }
  }
  [[nodiscard]] std::vector<float> download() const {
    std::vector<float> values(count_);
    if (type_ == DType::BF16) {
      std::vector<__nv_bfloat16> bits(count_);
      REQUIRE(cudaMemcpy(bits.data(), ptr_, count_ * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
      for (std::size_t idx = 0; idx < count_; ++idx) {
        values[idx] = __bfloat162float(bits[idx]);
      }
    } else {
      REQUIRE(cudaMemcpy(values.data(), ptr_, count_ * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
    }
    return values;
  }
  [[nodiscard]] void* get() const { return ptr_; }

private:
  DType type_;
  std::size_t count_;
  void* ptr_ = nullptr;
};

// A column-major cuBLASLt problem: D (m, n) = alpha op(A) op(B) + beta C, each operand padded to ld = rows + pad.
struct LtCase {
  std::uint64_t m = 0;
  std::uint64_t n = 0;
  std::uint64_t k = 0;
  bool trans_a = false;
  bool trans_b = false;
  DType ab_type = DType::BF16;
  DType cd_type = DType::BF16;
  std::uint64_t pad = 0;
  float alpha = 1.0f;
  float beta = 0.0f;
};

struct Shape {
  std::uint64_t rows;
  std::uint64_t cols;
  std::int64_t ld;
  // Elements a column-major matrix spans (no padding after its last column).
  [[nodiscard]] std::size_t span() const {
    return static_cast<std::size_t>((cols - 1) * static_cast<std::uint64_t>(ld) + rows);
  }
};

Shape shape_a(const LtCase& c) {
  const std::uint64_t rows = c.trans_a ? c.k : c.m;
  return {rows, c.trans_a ? c.m : c.k, static_cast<std::int64_t>(rows + c.pad)};
}
Shape shape_b(const LtCase& c) {
  const std::uint64_t rows = c.trans_b ? c.n : c.k;
  return {rows, c.trans_b ? c.k : c.n, static_cast<std::int64_t>(rows + c.pad)};
}
Shape shape_c(const LtCase& c) { return {c.m, c.n, static_cast<std::int64_t>(c.m + c.pad)}; }

struct LtResult {
  cublasStatus_t heuristic = CUBLAS_STATUS_SUCCESS;
  int found = 0;
  cublasLtMatmulHeuristicResult_t best{};
  cublasStatus_t matmul = CUBLAS_STATUS_NOT_INITIALIZED; // not run unless the heuristic found an algorithm
};

// Runs the case through the cuBLASLt calls GemmRunner makes (descriptor, layouts, preference, heuristic, matmul);
// with `bias`, through CUBLASLT_EPILOGUE_BIAS with a CUDA_R_16BF bias at that device address.
LtResult run_lt(const LtCase& c, const void* a, const void* b, const void* cin, void* d,
                cudaDataType_t ab_cuda_type, cudaDataType_t c_cuda_type,
                cublasComputeType_t compute = CUBLAS_COMPUTE_32F, const void* bias = nullptr) {
  cublasLtHandle_t handle = nullptr;
  REQUIRE(cublasLtCreate(&handle) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulDesc_t desc = nullptr;
  REQUIRE(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  const cublasOperation_t op_a = c.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = c.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)) ==
          CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)) ==
          CUBLAS_STATUS_SUCCESS);
  if (bias != nullptr) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_16BF;
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                           sizeof(bias_type)) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) ==
            CUBLAS_STATUS_SUCCESS);
  }
  const Shape sa = shape_a(c);
  const Shape sb = shape_b(c);
  const Shape sc = shape_c(c);
  cublasLtMatrixLayout_t la = nullptr;
  cublasLtMatrixLayout_t lb = nullptr;
  cublasLtMatrixLayout_t lc = nullptr;
  REQUIRE(cublasLtMatrixLayoutCreate(&la, ab_cuda_type, sa.rows, sa.cols, sa.ld) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasLtMatrixLayoutCreate(&lb, ab_cuda_type, sb.rows, sb.cols, sb.ld) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasLtMatrixLayoutCreate(&lc, c_cuda_type, sc.rows, sc.cols, sc.ld) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulPreference_t pref = nullptr;
  REQUIRE(cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS);
  const std::uint64_t max_ws = 1u << 20;
  REQUIRE(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws,
                                               sizeof(max_ws)) == CUBLAS_STATUS_SUCCESS);
  LtResult r;
  r.heuristic = cublasLtMatmulAlgoGetHeuristic(handle, desc, la, lb, lc, lc, pref, 1, &r.best, &r.found);
  if (r.heuristic == CUBLAS_STATUS_SUCCESS && r.found == 1) {
    r.matmul = cublasLtMatmul(handle, desc, &c.alpha, a, la, b, lb, &c.beta, cin, lc, d, lc, &r.best.algo, nullptr,
                              0, nullptr);
  }
  CHECK(cublasLtMatmulPreferenceDestroy(pref) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatrixLayoutDestroy(lc) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatrixLayoutDestroy(lb) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatrixLayoutDestroy(la) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmulDescDestroy(desc) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtDestroy(handle) == CUBLAS_STATUS_SUCCESS);
  return r;
}

// The naive column-major reference, in double, and the tolerance of an fp32-accumulated result: 1e-5 of the sum of
// the magnitudes of the terms (fp32 rounding over k <= a few hundred terms), plus the bf16 rounding of the output
// (half a unit in the last of 8 significand bits: 2^-9 relative, 2^-8 allowed).
struct Reference {
  std::vector<double> value;
  std::vector<double> tolerance;
};

Reference reference(const LtCase& c, const std::vector<float>& a, const std::vector<float>& b,
                    const std::vector<float>& cin, const std::vector<float>* bias = nullptr) {
  const Shape sa = shape_a(c);
  const Shape sb = shape_b(c);
  const Shape sc = shape_c(c);
  Reference ref;
  ref.value.assign(sc.span(), 0.0);
  ref.tolerance.assign(sc.span(), 0.0);
  const auto lda = static_cast<std::size_t>(sa.ld);
  const auto ldb = static_cast<std::size_t>(sb.ld);
  const auto ldc = static_cast<std::size_t>(sc.ld);
  for (std::size_t col = 0; col < c.n; ++col) {
    for (std::size_t row = 0; row < c.m; ++row) {
      double sum = 0.0;
      double magnitude = 0.0;
      for (std::size_t depth = 0; depth < c.k; ++depth) {
        const double x = a[c.trans_a ? depth + row * lda : row + depth * lda];
        const double y = b[c.trans_b ? col + depth * ldb : depth + col * ldb];
        sum += x * y;
        magnitude += std::abs(x * y);
      }
      const std::size_t at = row + col * ldc;
      const double beta_term = c.beta != 0.0f ? static_cast<double>(c.beta) * static_cast<double>(cin[at]) : 0.0;
      const double bias_term = bias != nullptr ? static_cast<double>((*bias)[row]) : 0.0; // per row of D
      ref.value[at] = static_cast<double>(c.alpha) * sum + beta_term + bias_term;
      ref.tolerance[at] =
          1e-5 * (std::abs(static_cast<double>(c.alpha)) * magnitude + std::abs(beta_term) + std::abs(bias_term)) +
                          (c.cd_type == DType::BF16 ? std::ldexp(std::abs(ref.value[at]), -8) : 0.0) + 1e-30;
    }
  }
  return ref;
}

// Sentinel in the padding rows of C / D, which a GEMM must leave alone.
constexpr float PAD_SENTINEL = 7.0f;

void fill_padding(std::vector<float>& values, const Shape& s) {
  for (std::size_t col = 0; col < s.cols; ++col) {
    for (auto row = static_cast<std::size_t>(s.rows); row < static_cast<std::size_t>(s.ld); ++row) {
      const std::size_t at = row + col * static_cast<std::size_t>(s.ld);
      if (at < values.size()) {
        values[at] = PAD_SENTINEL;
      }
    }
  }
}

// Elements of D that differ from the reference by more than the tolerance, plus padding elements that changed.
int count_mismatches(const LtCase& c, const std::vector<float>& got, const Reference& ref) {
  const Shape sc = shape_c(c);
  int bad = 0;
  for (std::size_t at = 0; at < got.size(); ++at) {
    const std::size_t row = at % static_cast<std::size_t>(sc.ld);
    if (row >= c.m) {
      bad += got[at] == PAD_SENTINEL ? 0 : 1;
    } else if (!(std::abs(static_cast<double>(got[at]) - ref.value[at]) <= ref.tolerance[at])) {
      if (bad < 5) {
        UNSCOPED_INFO("D[" << at << "] = " << got[at] << ", reference " << ref.value[at] << " +- "
                           << ref.tolerance[at]);
      }
      ++bad;
    }
  }
  return bad;
}

} // namespace

TEST_CASE("emu::cublasLt: matmul against a naive double GEMM", "[emu]") {
  LtCase c;
  c.m = 37;
  c.n = 23;
  c.k = 19;
  c.trans_a = GENERATE(false, true);
  c.trans_b = GENERATE(false, true);
  const int combo = GENERATE(0, 1, 2);
  c.ab_type = combo == 2 ? DType::F32 : DType::BF16;
  c.cd_type = combo == 0 ? DType::BF16 : DType::F32;
  c.pad = GENERATE(0u, 3u);
  const bool in_place = GENERATE(false, true);
  c.alpha = 0.75f;
  c.beta = GENERATE(0.0f, 0.5f);
  CAPTURE(c.trans_a, c.trans_b, combo, c.pad, in_place, c.beta);

  const Shape sa = shape_a(c);
  const Shape sb = shape_b(c);
  const Shape sc = shape_c(c);
  const std::vector<float> a = make_values(sa.span(), c.ab_type, 1);
  const std::vector<float> b = make_values(sb.span(), c.ab_type, 2);
  std::vector<float> cin = make_values(sc.span(), c.cd_type, 3);
  fill_padding(cin, sc);
  DeviceMatrix da(a, c.ab_type);
  DeviceMatrix db(b, c.ab_type);
  DeviceMatrix dc(cin, c.cd_type);
  std::vector<float> d_init(sc.span(), -3.0f);
  fill_padding(d_init, sc);
  DeviceMatrix dd(d_init, c.cd_type);
  void* d = in_place ? dc.get() : dd.get();

  const LtResult r = run_lt(c, da.get(), db.get(), dc.get(), d, to_cuda(c.ab_type), to_cuda(c.cd_type));
  REQUIRE(r.heuristic == CUBLAS_STATUS_SUCCESS);
  REQUIRE(r.found == 1);
  CHECK(r.best.state == CUBLAS_STATUS_SUCCESS);
  CHECK(r.best.workspaceSize == 0);
  REQUIRE(r.matmul == CUBLAS_STATUS_SUCCESS);
  const Reference ref = reference(c, a, b, cin);
  CHECK(count_mismatches(c, in_place ? dc.download() : dd.download(), ref) == 0);
  if (!in_place) {
    std::vector<float> c_after = dc.download();
    CHECK(c_after == cin); // C is read, never written, when D is another matrix
  }
}

TEST_CASE("emu::cublasLt: beta == 0 does not read C", "[emu]") {
  // A fresh allocation holds 0xff bytes (NaN); with beta == 0 cuBLAS ignores C, so D must be finite.
  LtCase c;
  c.m = 8;
  c.n = 5;
  c.k = 3;
  c.ab_type = DType::F32;
  c.cd_type = DType::F32;
  const std::vector<float> a = make_values(shape_a(c).span(), c.ab_type, 4);
  const std::vector<float> b = make_values(shape_b(c).span(), c.ab_type, 5);
  DeviceMatrix da(a, c.ab_type);
  DeviceMatrix db(b, c.ab_type);
  void* nan_c = nullptr;
  REQUIRE(cudaMalloc(&nan_c, shape_c(c).span() * 4) == cudaSuccess);
  const LtResult r = run_lt(c, da.get(), db.get(), nan_c, nan_c, CUDA_R_32F, CUDA_R_32F);
  REQUIRE(r.matmul == CUBLAS_STATUS_SUCCESS);
  std::vector<float> d(shape_c(c).span());
  REQUIRE(cudaMemcpy(d.data(), nan_c, d.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  const Reference ref = reference(c, a, b, d);
  CHECK(count_mismatches(c, d, ref) == 0);
  REQUIRE(cudaFree(nan_c) == cudaSuccess);
}

TEST_CASE("emu::cublasLt: operand overruns are refused before anything is written", "[emu]") {
  LtCase c;
  c.m = 16;
  c.n = 9;
  c.k = 7;
  c.pad = 2;
  c.trans_a = true;
  c.beta = 1.0f;
  const std::vector<float> a = make_values(shape_a(c).span(), c.ab_type, 6);
  const std::vector<float> b = make_values(shape_b(c).span(), c.ab_type, 7);
  const std::vector<float> cin = make_values(shape_c(c).span(), c.cd_type, 8);
  // One element short of what each operand's layout spans (the last column's last row is missing).
  const std::vector<float> a_short(a.begin(), a.end() - 1);
  const std::vector<float> b_short(b.begin(), b.end() - 1);
  const std::vector<float> c_short(cin.begin(), cin.end() - 1);
  DeviceMatrix da(a, c.ab_type);
  DeviceMatrix db(b, c.ab_type);
  DeviceMatrix dc(cin, c.cd_type);
  DeviceMatrix da_short(a_short, c.ab_type);
  DeviceMatrix db_short(b_short, c.ab_type);
  DeviceMatrix dc_short(c_short, c.cd_type);
  SECTION("A") {
    CHECK(run_lt(c, da_short.get(), db.get(), dc.get(), dc.get(), CUDA_R_16BF, CUDA_R_16BF).matmul ==
          CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("B") {
    CHECK(run_lt(c, da.get(), db_short.get(), dc.get(), dc.get(), CUDA_R_16BF, CUDA_R_16BF).matmul ==
          CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("C read (beta != 0) and D written") {
    CHECK(run_lt(c, da.get(), db.get(), dc_short.get(), dc.get(), CUDA_R_16BF, CUDA_R_16BF).matmul ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(run_lt(c, da.get(), db.get(), dc.get(), dc_short.get(), CUDA_R_16BF, CUDA_R_16BF).matmul ==
          CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("a host pointer") {
    std::vector<std::uint16_t> host(shape_b(c).span());
    CHECK(run_lt(c, da.get(), host.data(), dc.get(), dc.get(), CUDA_R_16BF, CUDA_R_16BF).matmul ==
          CUBLAS_STATUS_INVALID_VALUE);
  }
  CHECK(dc.download() == cin); // nothing was written by a refused call
}

TEST_CASE("emu::cublasLt: the heuristic's supported set", "[emu]") {
  LtCase c;
  c.m = 4;
  c.n = 3;
  c.k = 2;
  const std::vector<float> values(64, 0.0f);
  DeviceMatrix buf(values, DType::F32);
  SECTION("bf16 x bf16 -> bf16 / fp32 and fp32 x fp32 -> fp32 with CUBLAS_COMPUTE_32F") {
    CHECK(run_lt(c, buf.get(), buf.get(), buf.get(), buf.get(), CUDA_R_16BF, CUDA_R_16BF).found == 1);
    CHECK(run_lt(c, buf.get(), buf.get(), buf.get(), buf.get(), CUDA_R_16BF, CUDA_R_32F).found == 1);
    CHECK(run_lt(c, buf.get(), buf.get(), buf.get(), buf.get(), CUDA_R_32F, CUDA_R_32F).found == 1);
  }
  SECTION("other combinations find no algorithm") {
    const LtResult f32_in_bf16_out = run_lt(c, buf.get(), buf.get(), buf.get(), buf.get(), CUDA_R_32F, CUDA_R_16BF);
    CHECK(f32_in_bf16_out.heuristic == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(f32_in_bf16_out.found == 0);
    CHECK(run_lt(c, buf.get(), buf.get(), buf.get(), buf.get(), CUDA_R_16F, CUDA_R_16F).heuristic ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(run_lt(c, buf.get(), buf.get(), buf.get(), buf.get(), CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_16F)
              .heuristic == CUBLAS_STATUS_NOT_SUPPORTED);
  }
}

TEST_CASE("emu::cublasLt: descriptors, layouts and handles are checked", "[emu]") {
  cublasLtHandle_t handle = nullptr;
  REQUIRE(cublasLtCreate(&handle) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulDesc_t desc = nullptr;
  REQUIRE(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulPreference_t pref = nullptr;
  REQUIRE(cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS);
  SECTION("attributes: wrong size, unknown, not emulated") {
    const cublasOperation_t op = CUBLAS_OP_T;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op, 1) == CUBLAS_STATUS_INVALID_VALUE);
    const std::int32_t bad_op = 9;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &bad_op, sizeof(bad_op)) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(desc, static_cast<cublasLtMatmulDescAttributes_t>(16), &bad_op,
                                         sizeof(bad_op)) == CUBLAS_STATUS_INVALID_VALUE);
    const std::uint32_t gelu = CUBLASLT_EPILOGUE_GELU;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &gelu, sizeof(gelu)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    const std::uint32_t plain = CUBLASLT_EPILOGUE_DEFAULT;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &plain, sizeof(plain)) ==
          CUBLAS_STATUS_SUCCESS);
    const std::uint32_t relu_bias = CUBLASLT_EPILOGUE_RELU_BIAS;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &relu_bias, sizeof(relu_bias)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    const std::uint32_t bias_epilogue = CUBLASLT_EPILOGUE_BIAS;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &bias_epilogue,
                                         sizeof(bias_epilogue)) == CUBLAS_STATUS_SUCCESS);
    const void* bias = nullptr;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) ==
          CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, 4) ==
          CUBLAS_STATUS_INVALID_VALUE);
    const std::int32_t f32_bias = CUDA_R_32F;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &f32_bias, sizeof(f32_bias)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    const std::int32_t bf16_bias = CUDA_R_16BF;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bf16_bias,
                                         sizeof(bf16_bias)) == CUBLAS_STATUS_SUCCESS);
    const void* aux = nullptr;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    const std::uint64_t ws = 0;
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, 4) ==
          CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("ld < rows and disagreeing shapes are refused by the heuristic") {
    cublasLtMatrixLayout_t good = nullptr;
    cublasLtMatrixLayout_t short_ld = nullptr;
    cublasLtMatrixLayout_t other = nullptr;
    REQUIRE(cublasLtMatrixLayoutCreate(&good, CUDA_R_32F, 6, 6, 6) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&short_ld, CUDA_R_32F, 6, 6, 5) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&other, CUDA_R_32F, 5, 6, 5) == CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t result{};
    int found = -1;
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, desc, good, good, good, good, pref, 1, &result, &found) ==
          CUBLAS_STATUS_SUCCESS);
    CHECK(found == 1);
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, desc, short_ld, good, good, good, pref, 1, &result, &found) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(found == 0);
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, desc, good, other, good, good, pref, 1, &result, &found) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, desc, good, good, good, good, pref, 0, &result, &found) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatrixLayoutDestroy(good) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(short_ld) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(other) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, desc, good, good, good, good, pref, 1, &result, &found) ==
          CUBLAS_STATUS_INVALID_VALUE); // destroyed layouts
    CHECK(cublasLtMatrixLayoutDestroy(good) == CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("status strings are the library's") {
    CHECK(std::string(cublasLtGetStatusString(CUBLAS_STATUS_SUCCESS)) == "success");
    CHECK(std::string(cublasLtGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED)) ==
          "the requested functionality is not supported");
    CHECK(std::string(cublasLtGetStatusString(static_cast<cublasStatus_t>(2))) == "unrecognized status");
  }
  CHECK(cublasLtMatmulPreferenceDestroy(pref) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmulDescDestroy(desc) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtDestroy(handle) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtDestroy(handle) == CUBLAS_STATUS_INVALID_VALUE);
}

namespace {

// The cuBLASLt objects of a column-major LtCase (optionally with the bias epilogue), for heuristic-level tests.
class LtObjects {
public:
  LtObjects(const LtCase& c, cudaDataType_t ab_type, cudaDataType_t cd_type, bool bias_epilogue) {
    REQUIRE(cublasLtCreate(&handle) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    const cublasOperation_t op_a = c.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = c.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)) ==
            CUBLAS_STATUS_SUCCESS);
    if (bias_epilogue) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      REQUIRE(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)) ==
              CUBLAS_STATUS_SUCCESS);
    }
    const Shape sa = shape_a(c);
    const Shape sb = shape_b(c);
    const Shape sc = shape_c(c);
    REQUIRE(cublasLtMatrixLayoutCreate(&la, ab_type, sa.rows, sa.cols, sa.ld) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&lb, ab_type, sb.rows, sb.cols, sb.ld) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutCreate(&lc, cd_type, sc.rows, sc.cols, sc.ld) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS);
  }
  ~LtObjects() {
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(handle);
  }
  LtObjects(const LtObjects&) = delete;
  LtObjects& operator=(const LtObjects&) = delete;

  // Asks for `requested` algorithms; `results` gets what was returned.
  cublasStatus_t heuristic(int requested, std::vector<cublasLtMatmulHeuristicResult_t>& results) {
    results.assign(static_cast<std::size_t>(requested), cublasLtMatmulHeuristicResult_t{});
    int found = -1;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, desc, la, lb, lc, lc, pref, requested, results.data(), &found);
    results.resize(static_cast<std::size_t>(std::max(found, 0)));
    return status;
  }
  cublasStatus_t matmul(const LtCase& c, const cublasLtMatmulAlgo_t& algo, const void* a, const void* b,
                        const void* cin, void* d) {
    return cublasLtMatmul(handle, desc, &c.alpha, a, la, b, lb, &c.beta, cin, lc, d, lc, &algo, nullptr, 0, nullptr);
  }

  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr;
  cublasLtMatrixLayout_t lb = nullptr;
  cublasLtMatrixLayout_t lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
};

// Sets CUBOID_EMU_CUBLASLT_NO_EPILOGUE for its lifetime (unset afterwards, also when a REQUIRE fails).
class NoEpilogueEnv {
public:
  explicit NoEpilogueEnv(const char* value) { ::setenv("CUBOID_EMU_CUBLASLT_NO_EPILOGUE", value, 1); }
  ~NoEpilogueEnv() { ::unsetenv("CUBOID_EMU_CUBLASLT_NO_EPILOGUE"); }
  NoEpilogueEnv(const NoEpilogueEnv&) = delete;
  NoEpilogueEnv& operator=(const NoEpilogueEnv&) = delete;
};

} // namespace

TEST_CASE("emu::cublasLt: CUBLASLT_EPILOGUE_BIAS adds the bf16 bias per row of D; C != D leaves C untouched",
          "[emu]") {
  // D (m, n) = alpha op(A) op(B) + beta C + bias broadcast along the rows: bias[row] for every column (cuBLASLt
  // documentation, cublasLtEpilogue_t: "bias vector length must match matrix D rows"). m != n and distinct bias
  // values, so a bias applied per column (or not at all) is caught.
  LtCase c;
  c.m = 37;
  c.n = 23;
  c.k = 19;
  c.trans_a = GENERATE(false, true);
  c.trans_b = GENERATE(false, true);
  c.cd_type = GENERATE(DType::BF16, DType::F32);
  c.pad = 3;
  c.alpha = 0.75f;
  c.beta = GENERATE(0.0f, 0.5f);
  CAPTURE(c.trans_a, c.trans_b, c.cd_type == DType::BF16, c.beta);
  const Shape sc = shape_c(c);
  const std::vector<float> a = make_values(shape_a(c).span(), DType::BF16, 41);
  const std::vector<float> b = make_values(shape_b(c).span(), DType::BF16, 42);
  std::vector<float> cin = make_values(sc.span(), c.cd_type, 43);
  fill_padding(cin, sc);
  std::vector<float> bias = make_values(c.m, DType::BF16, 44);
  for (float& v : bias) {
    v = representable(4.0f * v, DType::BF16); // larger than the products' rounding, so a missing bias shows
  }
  DeviceMatrix da(a, DType::BF16);
  DeviceMatrix db(b, DType::BF16);
  DeviceMatrix dc(cin, c.cd_type);
  DeviceMatrix dbias(bias, DType::BF16);
  std::vector<float> d_init(sc.span(), -3.0f);
  fill_padding(d_init, sc);
  DeviceMatrix dd(d_init, c.cd_type);
  const LtResult r = run_lt(c, da.get(), db.get(), dc.get(), dd.get(), CUDA_R_16BF, to_cuda(c.cd_type),
                            CUBLAS_COMPUTE_32F, dbias.get());
  REQUIRE(r.heuristic == CUBLAS_STATUS_SUCCESS);
  REQUIRE(r.found == 1);
  REQUIRE(r.matmul == CUBLAS_STATUS_SUCCESS);
  CHECK(count_mismatches(c, dd.download(), reference(c, a, b, cin, &bias)) == 0);
  CHECK(dc.download() == cin); // C is only read
  CHECK(dbias.download() == bias);
}

TEST_CASE("emu::cublasLt: the bias is added in fp32, before the one rounding to bf16", "[emu]") {
  // k = 2: A = [1 1], B = [1, 2^-8]: A B = 1 + 2^-8 exactly in fp32, halfway between the bf16 neighbours 1 and
  // 1 + 2^-7. Bias 2^-8: in fp32 the sum is 1 + 2^-7, a bf16 value, so D = 1.0078125. Rounding A B to bf16 first
  // (ties to even: 1) and adding the bias after would give round(1 + 2^-8) = 1.
  LtCase c;
  c.m = 1;
  c.n = 1;
  c.k = 2;
  DeviceMatrix da({1.0f, 1.0f}, DType::BF16);
  DeviceMatrix db({1.0f, 0.00390625f}, DType::BF16);
  DeviceMatrix dbias({0.00390625f}, DType::BF16);
  DeviceMatrix dd({0.0f}, DType::BF16);
  const LtResult r = run_lt(c, da.get(), db.get(), dd.get(), dd.get(), CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F,
                            dbias.get());
  REQUIRE(r.matmul == CUBLAS_STATUS_SUCCESS);
  CHECK(dd.download() == std::vector<float>{1.0078125f});
}

TEST_CASE("emu::cublasLt: the bias epilogue checks its pointer, its extent and its type", "[emu]") {
  LtCase c;
  c.m = 6;
  c.n = 4;
  c.k = 3;
  DeviceMatrix buf(std::vector<float>(64, 0.5f), DType::BF16);
  DeviceMatrix short_bias(std::vector<float>(c.m - 1, 1.0f), DType::BF16);
  SECTION("no bias pointer") {
    LtObjects lt(c, CUDA_R_16BF, CUDA_R_16BF, true);
    std::vector<cublasLtMatmulHeuristicResult_t> results;
    REQUIRE(lt.heuristic(1, results) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(results.size() == 1);
    CHECK(lt.matmul(c, results[0].algo, buf.get(), buf.get(), buf.get(), buf.get()) == CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("a bias shorter than the rows of D") {
    CHECK(run_lt(c, buf.get(), buf.get(), buf.get(), buf.get(), CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F,
                 short_bias.get())
              .matmul == CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("an unset bias type means D's type: fp32 D needs a bf16 bias type set explicitly") {
    LtObjects lt(c, CUDA_R_16BF, CUDA_R_32F, true);
    std::vector<cublasLtMatmulHeuristicResult_t> results;
    CHECK(lt.heuristic(1, results) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(results.empty());
    const cudaDataType_t bf16 = CUDA_R_16BF;
    REQUIRE(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bf16, sizeof(bf16)) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(lt.heuristic(1, results) == CUBLAS_STATUS_SUCCESS);
    CHECK(results.size() == 1);
  }
}

TEST_CASE("emu::cublasLt: the heuristic returns up to 3 distinct algorithms that compute the same D", "[emu]") {
  LtCase c;
  c.m = 21;
  c.n = 11;
  c.k = 9;
  c.beta = 1.0f;
  LtObjects lt(c, CUDA_R_16BF, CUDA_R_16BF, false);
  std::vector<cublasLtMatmulHeuristicResult_t> results;
  REQUIRE(lt.heuristic(2, results) == CUBLAS_STATUS_SUCCESS);
  CHECK(results.size() == 2);
  REQUIRE(lt.heuristic(8, results) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(results.size() == 3);
  std::set<std::uint64_t> ids;
  for (const auto& result : results) {
    CHECK(result.state == CUBLAS_STATUS_SUCCESS);
    ids.insert(result.algo.data[1]);
  }
  CHECK(ids.size() == 3); // distinct descriptors
  const std::vector<float> a = make_values(shape_a(c).span(), DType::BF16, 51);
  const std::vector<float> b = make_values(shape_b(c).span(), DType::BF16, 52);
  const std::vector<float> cin = make_values(shape_c(c).span(), DType::BF16, 53);
  DeviceMatrix da(a, DType::BF16);
  DeviceMatrix db(b, DType::BF16);
  DeviceMatrix dc(cin, DType::BF16);
  DeviceMatrix dd(std::vector<float>(shape_c(c).span(), 0.0f), DType::BF16);
  std::vector<std::vector<float>> outputs;
  for (const auto& result : results) {
    REQUIRE(lt.matmul(c, result.algo, da.get(), db.get(), dc.get(), dd.get()) == CUBLAS_STATUS_SUCCESS);
    outputs.push_back(dd.download());
  }
  CHECK(count_mismatches(c, outputs[0], reference(c, a, b, cin)) == 0);
  CHECK(outputs[1] == outputs[0]);
  CHECK(outputs[2] == outputs[0]);
  cublasLtMatmulAlgo_t forged = results[0].algo;
  forged.data[1] = 3;
  CHECK(lt.matmul(c, forged, da.get(), db.get(), dc.get(), dd.get()) == CUBLAS_STATUS_INVALID_VALUE);
}

TEST_CASE("emu::cublasLt: CUBOID_EMU_CUBLASLT_NO_EPILOGUE=1 finds no algorithm for the bias epilogue", "[emu]") {
  LtCase c;
  c.m = 8;
  c.n = 8;
  c.k = 8;
  std::vector<cublasLtMatmulHeuristicResult_t> results;
  SECTION("cuBLASLt level: 0 results for the bias epilogue, the default epilogue unaffected") {
    const NoEpilogueEnv env("1");
    LtObjects with_bias(c, CUDA_R_16BF, CUDA_R_16BF, true);
    CHECK(with_bias.heuristic(8, results) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(results.empty());
    LtObjects plain(c, CUDA_R_16BF, CUDA_R_16BF, false);
    CHECK(plain.heuristic(8, results) == CUBLAS_STATUS_SUCCESS);
    CHECK(results.size() == 3);
  }
  SECTION("unset or 0: off; another value is an error, not a default") {
    LtObjects with_bias(c, CUDA_R_16BF, CUDA_R_16BF, true);
    CHECK(with_bias.heuristic(1, results) == CUBLAS_STATUS_SUCCESS);
    CHECK(results.size() == 1);
    {
      const NoEpilogueEnv env("0");
      CHECK(with_bias.heuristic(1, results) == CUBLAS_STATUS_SUCCESS);
      CHECK(results.size() == 1);
    }
    const NoEpilogueEnv env("yes");
    CHECK(with_bias.heuristic(1, results) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(results.empty());
  }
  SECTION("GemmRunner: has_algorithm is false for the bias GEMM only, and run() throws DeviceError") {
    const NoEpilogueEnv env("1");
    REQUIRE(cudaSetDevice(0) == cudaSuccess);
    DeviceMatrix buf(std::vector<float>(64, 0.5f), DType::BF16);
    const std::size_t ws_bytes = cuda::workspace_bytes({});
    void* workspace = nullptr;
    REQUIRE(cudaMalloc(&workspace, ws_bytes) == cudaSuccess);
    for (const auto selection : {cuda::GemmAlgoSelection::Heuristic, cuda::GemmAlgoSelection::Autotune}) {
      cuda::GemmRunner runner(selection);
      cuda::GemmArgs args;
      args.m = 8;
      args.n = 8;
      args.k = 8;
      args.a = args.b = args.c = buf.get();
      CHECK(runner.has_algorithm(args, ws_bytes));
      args.bias = buf.get();
      CHECK_FALSE(runner.has_algorithm(args, ws_bytes));
      CHECK_FALSE(runner.has_algorithm(args, ws_bytes)); // cached: the same answer
      REQUIRE_THROWS_AS(runner.run(args, workspace, ws_bytes, nullptr), cuboid::exec::DeviceError);
      REQUIRE_THROWS_WITH(runner.run(args, workspace, ws_bytes, nullptr),
                          Catch::Contains("no algorithm") && Catch::Contains("bias=true"));
      args.bias = nullptr;
      REQUIRE_NOTHROW(runner.run(args, workspace, ws_bytes, nullptr));
    }
    REQUIRE(cudaFree(workspace) == cudaSuccess);
  }
}

namespace {

// Row-major reference of GemmArgs (exec/cuda/gemm.hpp): C (m, n) = alpha op(A) op(B) + beta C0 (+ bias[col] when
// `bias` is given: one value per row-major column), for every `step`-th row and column (every element for small
// problems, a sample for large ones).
void check_row_major(const cuda::GemmArgs& args, const std::vector<float>& a, const std::vector<float>& b,
                     const std::vector<float>& c0, const std::vector<float>& got, std::int64_t step,
                     const std::vector<float>* bias = nullptr) {
  int bad = 0;
  for (std::int64_t row = 0; row < args.m; row += step) {
    for (std::int64_t col = 0; col < args.n; col += step) {
      double sum = 0.0;
      double magnitude = 0.0;
      for (std::int64_t depth = 0; depth < args.k; ++depth) {
        const double x = a[static_cast<std::size_t>(args.trans_a ? depth * args.m + row : row * args.k + depth)];
        const double y = b[static_cast<std::size_t>(args.trans_b ? col * args.k + depth : depth * args.n + col)];
        sum += x * y;
        magnitude += std::abs(x * y);
      }
      const auto at = static_cast<std::size_t>(row * args.n + col);
      const double beta_term = args.beta != 0.0f ? static_cast<double>(args.beta) * static_cast<double>(c0[at]) : 0.0;
      const double bias_term = bias != nullptr ? static_cast<double>((*bias)[static_cast<std::size_t>(col)]) : 0.0;
      const double want = static_cast<double>(args.alpha) * sum + beta_term + bias_term;
      const double tol =
          1e-5 * (std::abs(static_cast<double>(args.alpha)) * magnitude + std::abs(beta_term) + std::abs(bias_term)) +
                         (args.c_type == cuda::GemmDType::BF16 ? std::ldexp(std::abs(want), -8) : 0.0) + 1e-30;
      if (!(std::abs(static_cast<double>(got[at]) - want) <= tol)) {
        if (bad < 5) {
          UNSCOPED_INFO("C[" << row << "][" << col << "] = " << got[at] << ", reference " << want << " +- " << tol);
        }
        ++bad;
      }
    }
  }
  CHECK(bad == 0);
}

DType dtype_of(cuda::GemmDType t) { return t == cuda::GemmDType::BF16 ? DType::BF16 : DType::F32; }

} // namespace

TEST_CASE("emu::cublasLt: exec::cuda::GemmRunner (the linear layer's GEMMs)", "[emu]") {
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  const std::size_t ws_bytes = cuda::workspace_bytes({});
  void* workspace = nullptr;
  REQUIRE(cudaMalloc(&workspace, ws_bytes) == cudaSuccess);
  cuda::GemmRunner runner;

  SECTION("forward, data gradient and weight gradient of every dtype, on odd sizes") {
    cuda::GemmArgs args;
    args.m = 29;
    args.n = 17;
    args.k = 13;
    args.trans_a = GENERATE(false, true);
    args.trans_b = GENERATE(false, true);
    const int combo = GENERATE(0, 1, 2);
    args.a_type = args.b_type = combo == 2 ? cuda::GemmDType::F32 : cuda::GemmDType::BF16;
    args.c_type = combo == 0 ? cuda::GemmDType::BF16 : cuda::GemmDType::F32;
    args.alpha = 1.0f;
    args.beta = combo == 0 ? 0.0f : 1.0f; // fp32 C accumulates, as the weight gradient over micro-batches
    CAPTURE(args.trans_a, args.trans_b, combo);
    const std::vector<float> a = make_values(static_cast<std::size_t>(args.m * args.k), dtype_of(args.a_type), 11);
    const std::vector<float> b = make_values(static_cast<std::size_t>(args.k * args.n), dtype_of(args.b_type), 12);
    const std::vector<float> c0 = make_values(static_cast<std::size_t>(args.m * args.n), dtype_of(args.c_type), 13);
    DeviceMatrix da(a, dtype_of(args.a_type));
    DeviceMatrix db(b, dtype_of(args.b_type));
    DeviceMatrix dc(c0, dtype_of(args.c_type));
    args.a = da.get();
    args.b = db.get();
    args.c = dc.get();
    runner.run(args, workspace, ws_bytes, stream);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    const std::vector<float> once = dc.download();
    check_row_major(args, a, b, c0, once, 1);
    if (args.beta != 0.0f) { // a second run (cached plan) accumulates onto the first
      runner.run(args, workspace, ws_bytes, stream);
      check_row_major(args, a, b, once, dc.download(), 1);
    }
  }
  SECTION("bias per row-major column and a residual read from c_in (C != D), Heuristic and Autotune") {
    const auto selection = GENERATE(cuda::GemmAlgoSelection::Heuristic, cuda::GemmAlgoSelection::Autotune);
    cuda::GemmRunner selected(selection);
    cuda::GemmArgs args;
    args.m = 29;
    args.n = 17;
    args.k = 13;
    args.trans_a = GENERATE(false, true);
    args.trans_b = GENERATE(false, true);
    const bool use_bias = GENERATE(false, true);
    args.beta = 1.0f;
    CAPTURE(selection == cuda::GemmAlgoSelection::Autotune, args.trans_a, args.trans_b, use_bias);
    const std::vector<float> a = make_values(static_cast<std::size_t>(args.m * args.k), DType::BF16, 61);
    const std::vector<float> b = make_values(static_cast<std::size_t>(args.k * args.n), DType::BF16, 62);
    const std::vector<float> residual = make_values(static_cast<std::size_t>(args.m * args.n), DType::BF16, 63);
    const std::vector<float> bias = make_values(static_cast<std::size_t>(args.n), DType::BF16, 64);
    DeviceMatrix da(a, DType::BF16);
    DeviceMatrix db(b, DType::BF16);
    DeviceMatrix dres(residual, DType::BF16);
    DeviceMatrix dbias(bias, DType::BF16);
    // The output starts as NaN: with c_in set, c must only be written (a read of it would propagate NaN).
    const std::vector<float> nan_values(static_cast<std::size_t>(args.m * args.n), std::nanf(""));
    DeviceMatrix dc(nan_values, DType::BF16);
    args.a = da.get();
    args.b = db.get();
    args.c = dc.get();
    args.c_in = dres.get();
    args.bias = use_bias ? dbias.get() : nullptr;
    REQUIRE(selected.has_algorithm(args, ws_bytes));
    selected.run(args, workspace, ws_bytes, stream);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    check_row_major(args, a, b, residual, dc.download(), 1, use_bias ? &bias : nullptr);
    CHECK(dres.download() == residual); // C_in is only read
    // A second layer's bias on the cached plan: the bias pointer is set on every call, not frozen in the plan.
    if (use_bias) {
      const std::vector<float> bias2 = make_values(static_cast<std::size_t>(args.n), DType::BF16, 65);
      DeviceMatrix dbias2(bias2, DType::BF16);
      args.bias = dbias2.get();
      selected.run(args, workspace, ws_bytes, stream);
      check_row_major(args, a, b, residual, dc.download(), 1, &bias2);
    }
  }
  SECTION("Autotune times into its own scratch: an in-place fp32 accumulation (beta = 1) adds A B exactly once") {
    cuda::GemmRunner tuned(cuda::GemmAlgoSelection::Autotune);
    cuda::GemmArgs args;
    args.m = 19;
    args.n = 23;
    args.k = 31;
    args.trans_a = true;
    args.c_type = cuda::GemmDType::F32;
    args.beta = 1.0f;
    const std::vector<float> a = make_values(static_cast<std::size_t>(args.m * args.k), DType::BF16, 71);
    const std::vector<float> b = make_values(static_cast<std::size_t>(args.k * args.n), DType::BF16, 72);
    const std::vector<float> c0 = make_values(static_cast<std::size_t>(args.m * args.n), DType::F32, 73);
    DeviceMatrix da(a, DType::BF16);
    DeviceMatrix db(b, DType::BF16);
    DeviceMatrix dc(c0, DType::F32);
    args.a = da.get();
    args.b = db.get();
    args.c = dc.get();
    tuned.run(args, workspace, ws_bytes, stream); // tunes (3 emulated candidates x 4 launches), then runs once
    const std::vector<float> once = dc.download();
    check_row_major(args, a, b, c0, once, 1);
    tuned.run(args, workspace, ws_bytes, stream);
    check_row_major(args, a, b, once, dc.download(), 1);
  }
  SECTION("a transformer-sized GEMM (2048 x 512 x 512), sampled") {
    cuda::GemmArgs args;
    args.m = 2048;
    args.n = 512;
    args.k = 512;
    args.trans_b = true;
    const std::vector<float> a = make_values(static_cast<std::size_t>(args.m * args.k), DType::BF16, 21);
    const std::vector<float> b = make_values(static_cast<std::size_t>(args.k * args.n), DType::BF16, 22);
    DeviceMatrix da(a, DType::BF16);
    DeviceMatrix db(b, DType::BF16);
    void* c = nullptr;
    REQUIRE(cudaMalloc(&c, static_cast<std::size_t>(args.m * args.n) * 2) == cudaSuccess);
    args.a = da.get();
    args.b = db.get();
    args.c = c;
    runner.run(args, workspace, ws_bytes, stream);
    std::vector<__nv_bfloat16> bits(static_cast<std::size_t>(args.m * args.n));
    REQUIRE(cudaMemcpy(bits.data(), c, bits.size() * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
    std::vector<float> got(bits.size());
    for (std::size_t idx = 0; idx < bits.size(); ++idx) {
      got[idx] = __bfloat162float(bits[idx]);
    }
    check_row_major(args, a, b, {}, got, 37);
    REQUIRE(cudaFree(c) == cudaSuccess);
  }
  SECTION("errors surface as DeviceError") {
    cuda::GemmArgs args;
    args.m = 4;
    args.n = 4;
    args.k = 4;
    const std::vector<float> small = make_values(16, DType::BF16, 31);
    DeviceMatrix da(small, DType::BF16);
    const std::vector<float> too_small = make_values(15, DType::BF16, 32);
    DeviceMatrix dc_short(too_small, DType::BF16);
    args.a = da.get();
    args.b = da.get();
    args.c = dc_short.get();
    REQUIRE_THROWS_AS(runner.run(args, workspace, ws_bytes, stream), cuboid::exec::DeviceError);
    REQUIRE_THROWS_WITH(runner.run(args, workspace, ws_bytes, stream),
                        Catch::Contains("cublasLtMatmul") &&
                            Catch::Contains("an unsupported value or parameter was passed to the function"));
    args.a_type = cuda::GemmDType::F32; // fp32 x bf16: can_implement refuses it
    REQUIRE_THROWS_WITH(runner.run(args, workspace, ws_bytes, stream), Catch::Contains("unsupported dtypes"));
    args.a_type = cuda::GemmDType::BF16;
    const std::vector<float> square = make_values(16, DType::BF16, 33);
    DeviceMatrix dc(square, DType::BF16);
    args.c = dc.get();
    REQUIRE_NOTHROW(runner.run(args, workspace, ws_bytes, stream));
    // A workspace claimed larger than its allocation is an overrun too.
    REQUIRE_THROWS_WITH(runner.run(args, workspace, ws_bytes + 1, stream),
                        Catch::Contains("an unsupported value or parameter was passed to the function"));
  }
  REQUIRE(cudaFree(workspace) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}
