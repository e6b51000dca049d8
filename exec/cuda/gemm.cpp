// cuBLASLt GEMMs. Descriptors and the chosen algorithm are cached per (shape, transposes, dtypes, beta != 0,
// workspace size), because creating them and running the heuristic costs tens of microseconds per call.
#include "exec/cuda/gemm.hpp"

#include "exec/cuda/cuda_check.hpp"
#include "exec/device_error.hpp"

#include <fmt/format.h>

#include <cublasLt.h>

namespace cuboid::exec::cuda {

namespace {
constexpr std::size_t WORKSPACE_BYTES = 32u << 20;

cudaDataType_t to_cuda(GemmDType t) { return t == GemmDType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }
} // namespace

ColumnMajorProblem to_column_major(const GemmArgs& args) {
  ColumnMajorProblem p;
  p.m = args.n;
  p.n = args.m;
  p.k = args.k;
  // Row-major B (k, n) is column-major B^T (n, k) with ld n; stored transposed (n, k) it is column-major (k, n), ld k.
  p.trans_first = args.trans_b;
  p.ld_first = args.trans_b ? args.k : args.n;
  p.first = args.b;
  p.first_type = args.b_type;
  // Row-major A (m, k) is column-major A^T (k, m) with ld k; stored transposed (k, m) it is column-major (m, k), ld m.
  p.trans_second = args.trans_a;
  p.ld_second = args.trans_a ? args.m : args.k;
  p.second = args.a;
  p.second_type = args.a_type;
  p.ld_c = args.n;
  return p;
}

std::string can_implement(const GemmArgs& args) {
  if (args.m <= 0 || args.n <= 0 || args.k <= 0) {
    return fmt::format("m, n, k must be positive (got {}, {}, {})", args.m, args.n, args.k);
  }
  if (args.a == nullptr || args.b == nullptr || args.c == nullptr) {
    return "a, b and c must be non-null";
  }
  const bool bf16_in = args.a_type == GemmDType::BF16 && args.b_type == GemmDType::BF16;
  const bool f32_all =
      args.a_type == GemmDType::F32 && args.b_type == GemmDType::F32 && args.c_type == GemmDType::F32;
  if (!bf16_in && !f32_all) {
    return "unsupported dtypes (supported: bf16 x bf16 -> bf16 or fp32, fp32 x fp32 -> fp32)";
  }
  return {};
}

std::size_t workspace_bytes(const GemmArgs& /*args*/) { return WORKSPACE_BYTES; }

struct GemmRunner::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t first = nullptr;
  cublasLtMatrixLayout_t second = nullptr;
  cublasLtMatrixLayout_t c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (second != nullptr) cublasLtMatrixLayoutDestroy(second);
    if (first != nullptr) cublasLtMatrixLayoutDestroy(first);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

GemmRunner::GemmRunner() {
  cublasLtHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&handle));
  handle_ = handle;
}

GemmRunner::~GemmRunner() {
  plans_.clear();
  if (handle_ != nullptr) {
    cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
  }
}

void GemmRunner::run(const GemmArgs& args, void* workspace, std::size_t workspace_size, cudaStream_t stream) {
  if (const std::string why = can_implement(args); !why.empty()) {
    throw DeviceError(library_error_message("GemmRunner::run", __FILE__, __LINE__, why));
  }
  const ColumnMajorProblem p = to_column_major(args);
  const Key key{args.m, args.n, args.k, args.trans_a, args.trans_b, static_cast<int>(args.a_type),
                static_cast<int>(args.b_type), static_cast<int>(args.c_type), args.beta != 0.0f, workspace_size};
  auto& slot = plans_[key];
  if (!slot) {
    auto plan = std::make_unique<Plan>();
    // fp32 accumulation and fp32 alpha / beta for every supported dtype combination.
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_first = p.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_second = p.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    // Stored shapes (rows x cols, column-major) of the operands before their op.
    const auto rows_first = static_cast<std::uint64_t>(p.trans_first ? p.k : p.m);
    const auto cols_first = static_cast<std::uint64_t>(p.trans_first ? p.m : p.k);
    const auto rows_second = static_cast<std::uint64_t>(p.trans_second ? p.n : p.k);
    const auto cols_second = static_cast<std::uint64_t>(p.trans_second ? p.k : p.n);
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->first, to_cuda(p.first_type), rows_first, cols_first, p.ld_first));
    CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&plan->second, to_cuda(p.second_type), rows_second, cols_second, p.ld_second));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c, to_cuda(args.c_type), static_cast<std::uint64_t>(p.m),
                                            static_cast<std::uint64_t>(p.n), p.ld_c));
    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t max_ws = workspace_size;
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t set = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                    &max_ws, sizeof(max_ws));
    const cublasStatus_t heur =
        set == CUBLAS_STATUS_SUCCESS
            ? cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(handle_), plan->op, plan->first,
                                             plan->second, plan->c, plan->c, pref, 1, &result, &found)
            : set;
    cublasLtMatmulPreferenceDestroy(pref);
    CUBLAS_CHECK(heur);
    if (found == 0) {
      throw DeviceError(library_error_message(
          "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__,
          fmt::format("no algorithm for m={} n={} k={} trans_a={} trans_b={}", args.m, args.n, args.k, args.trans_a,
                      args.trans_b)));
    }
    plan->algo = result.algo;
    slot = std::move(plan);
  }
  CUBLAS_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), slot->op, &args.alpha, p.first, slot->first,
                              p.second, slot->second, &args.beta, args.c, slot->c, args.c, slot->c, &slot->algo,
                              workspace, workspace_size, stream));
}

} // namespace cuboid::exec::cuda
